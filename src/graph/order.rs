//! Checks, order and clean-up of the graph: dangling inputs, duplicate outputs and cycles;
//! topological order; removal of dead nodes and unused initializers.

use std::collections::{HashMap, HashSet};

use super::{Graph, Node};
use crate::error::{Error, Result};
use crate::onnx::pb;

impl Graph {
    /// Checks that every node input exists (graph input, initializer or the output of some
    /// node), that no value is produced twice and that the graph has no cycle.
    ///
    /// # Errors
    /// Names the first offending node and value, or the nodes on a cycle.
    pub fn check(&self) -> Result<()> {
        let mut known: HashSet<&str> = self
            .inputs
            .iter()
            .filter_map(|i| i.name.as_deref())
            .collect();
        known.extend(self.initializer_index.keys().map(String::as_str));
        let mut produced: HashMap<&str, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if let Some(prev) = produced.insert(o.as_str(), i) {
                    return Err(n.error(format!(
                        "output `{o}` is also produced by node `{}`",
                        self.nodes[prev].display_name()
                    )));
                }
            }
        }
        for n in &self.nodes {
            for input in n.inputs.iter().filter(|s| !s.is_empty()) {
                if !known.contains(input.as_str()) && !produced.contains_key(input.as_str()) {
                    return Err(n.error(format!(
                        "input `{input}` is not a graph input, an initializer or the output of any node"
                    )));
                }
            }
        }
        for o in &self.outputs {
            let name = o.name.as_deref().unwrap_or("");
            if !known.contains(name) && !produced.contains_key(name) {
                return Err(Error::Graph(format!(
                    "graph output `{name}` is not produced by any node"
                )));
            }
        }
        self.topological_order().map(|_| ())
    }

    /// Node indices in a topological order (file order where the file is already sorted).
    ///
    /// # Errors
    /// The graph has a cycle (the message lists some nodes on it).
    pub fn topological_order(&self) -> Result<Vec<usize>> {
        let producers = self.producers();
        let n = self.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            let deps: HashSet<usize> = node
                .inputs
                .iter()
                .filter_map(|s| producers.get(s.as_str()).copied())
                .collect();
            indegree[i] = deps.len();
            for d in deps {
                users[d].push(i);
            }
        }
        // Min-heap by index keeps the file order when it is already valid.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.push(std::cmp::Reverse(u));
                }
            }
        }
        if order.len() < n {
            let stuck: Vec<String> = (0..n)
                .filter(|&i| indegree[i] > 0)
                .take(5)
                .map(|i| format!("`{}`", self.nodes[i].display_name()))
                .collect();
            return Err(Error::Graph(format!(
                "the graph has a cycle through {} node(s), e.g. {}",
                (0..n).filter(|&i| indegree[i] > 0).count(),
                stuck.join(", ")
            )));
        }
        Ok(order)
    }

    /// Reorders the nodes topologically (stable where already sorted).
    ///
    /// # Errors
    /// The graph has a cycle.
    pub fn sort_topologically(&mut self) -> Result<()> {
        let order = self.topological_order()?;
        let mut slots: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(())
    }

    /// Every value name referenced anywhere: node inputs (including inside subgraphs, which
    /// may capture outer values) and graph outputs.
    pub(super) fn referenced_names(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for n in &self.nodes {
            node_references(n, |s| {
                out.insert(s.to_string());
            });
        }
        out.extend(self.outputs.iter().filter_map(|o| o.name.clone()));
        out
    }

    /// Removes nodes none of whose outputs is used, directly or through other removed nodes.
    /// Returns how many were removed.
    ///
    /// One reverse-reachability pass from the graph outputs (linear in the graph size): a
    /// node is kept when one of its outputs is a graph output or is read (as an input, or
    /// captured by a subgraph) by a kept node.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let producers: HashMap<&str, usize> = self.producers();
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = Vec::new();
        let mark = |name: &str, live: &mut Vec<bool>, stack: &mut Vec<usize>| {
            if let Some(&i) = producers.get(name) {
                if !live[i] {
                    live[i] = true;
                    stack.push(i);
                }
            }
        };
        for o in self.outputs.iter().filter_map(|o| o.name.as_deref()) {
            mark(o, &mut live, &mut stack);
        }
        while let Some(i) = stack.pop() {
            node_references(&self.nodes[i], |s| mark(s, &mut live, &mut stack));
        }
        let before = self.nodes.len();
        let mut keep = live.into_iter();
        self.nodes.retain(|_| keep.next().unwrap_or(true));
        before - self.nodes.len()
    }

    /// Removes initializers no node (or subgraph) uses and that are not graph outputs, and
    /// their entries in the graph inputs. Returns how many were removed.
    pub fn remove_unused_initializers(&mut self) -> usize {
        let used = self.referenced_names();
        let before = self.initializers.len();
        let mut dropped = HashSet::new();
        self.initializers.retain(|t| {
            let name = t.name.clone().unwrap_or_default();
            let keep = used.contains(&name);
            if !keep {
                dropped.insert(name);
            }
            keep
        });
        self.inputs
            .retain(|i| !dropped.contains(i.name.as_deref().unwrap_or("")));
        self.reindex_initializers();
        before - self.initializers.len()
    }
}

/// Calls `f` with every value name `n` reads: its inputs and the names its subgraphs read
/// (walked with an explicit stack, not recursion).
pub(crate) fn node_references<'a>(n: &'a Node, mut f: impl FnMut(&'a str)) {
    n.inputs.iter().for_each(|s| f(s));
    let mut graphs: Vec<&'a pb::GraphProto> = Vec::new();
    let push = |attrs: &'a [pb::AttributeProto], graphs: &mut Vec<&'a pb::GraphProto>| {
        for a in attrs {
            graphs.extend(a.g.as_ref());
            graphs.extend(a.graphs.iter());
        }
    };
    push(&n.attributes, &mut graphs);
    while let Some(g) = graphs.pop() {
        for sub in &g.node {
            sub.input.iter().for_each(|s| f(s));
            push(&sub.attribute, &mut graphs);
        }
    }
}
