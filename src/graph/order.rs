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
        fn walk(g: &pb::GraphProto, out: &mut HashSet<String>) {
            for n in &g.node {
                out.extend(n.input.iter().cloned());
                for a in &n.attribute {
                    if let Some(sub) = &a.g {
                        walk(sub, out);
                    }
                    for sub in &a.graphs {
                        walk(sub, out);
                    }
                }
            }
        }
        let mut out = HashSet::new();
        for n in &self.nodes {
            out.extend(n.inputs.iter().cloned());
            for a in &n.attributes {
                if let Some(sub) = &a.g {
                    walk(sub, &mut out);
                }
                for sub in &a.graphs {
                    walk(sub, &mut out);
                }
            }
        }
        out.extend(self.outputs.iter().filter_map(|o| o.name.clone()));
        out
    }

    /// Removes nodes none of whose outputs is used (repeatedly). Returns how many were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut removed = 0;
        loop {
            let used = self.referenced_names();
            let before = self.nodes.len();
            self.nodes
                .retain(|n| n.outputs.iter().any(|o| !o.is_empty() && used.contains(o)));
            let gone = before - self.nodes.len();
            if gone == 0 {
                return removed;
            }
            removed += gone;
        }
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
