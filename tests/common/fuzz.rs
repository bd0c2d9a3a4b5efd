//! Mutation fuzzing of decode + graph build + analyses (shared by the `fuzz` test and the
//! `fuzz` bench, which runs it at scale).
//!
//! Each case takes a real fixture's bytes, applies one seeded mutation (bit flips, byte
//! overwrites, truncation, insertion, chunk duplication, or a random varint/length splice),
//! and runs everything `isquant inspect` and `convert` run on it. A panic is a failure;
//! errors are expected and counted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use bytes::Bytes;

/// The crate's seeded generator.
pub use isquant::rng::SplitMix64 as Rng;

/// Applies one random mutation.
pub fn mutate(src: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = src.to_vec();
    match rng.below(7) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
        }
        2 => v.truncate(rng.below(v.len())),
        3 => {
            let i = rng.below(v.len());
            let n = 1 + rng.below(16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(i..i, ins);
        }
        4 => {
            let a = rng.below(v.len());
            let len = rng.below(64).min(v.len() - a);
            let chunk = v[a..a + len].to_vec();
            let at = rng.below(v.len());
            v.splice(at..at, chunk);
        }
        5 => {
            // Overwrite with a large varint: stresses lengths and counts.
            let i = rng.below(v.len());
            for (k, b) in [0xff, 0xff, 0xff, 0xff, 0x0f].iter().enumerate() {
                if i + k < v.len() {
                    v[i + k] = *b;
                }
            }
        }
        _ => {
            let a = rng.below(v.len());
            let b = rng.below(v.len());
            let (a, b) = (a.min(b), a.max(b));
            v.drain(a..b.min(a + 256));
        }
    }
    v
}

/// Outcome counts of a fuzz run.
#[derive(Debug, Default)]
pub struct Counts {
    pub cases: usize,
    pub loaded: usize,
    pub rejected: usize,
    pub panics: usize,
}

/// Runs decode, graph build and check, inspect, fold-bn analysis and write-back.
pub fn exercise(bytes: &[u8]) -> Result<(), isquant::Error> {
    let loaded = isquant::load_bytes(Bytes::copy_from_slice(bytes), Path::new("<fuzz>"), None)?;
    let _ = isquant::inspect::inspect(&loaded.model, "<fuzz>", &loaded.info)?;
    let _ = loaded.model.graph.topological_order()?;
    let _ = isquant::onnx::io::encode_model(&loaded.model.to_proto());
    for t in loaded.model.graph.initializers() {
        let _ = isquant::onnx::tensor::to_array(t);
    }
    Ok(())
}

/// Runs `n` mutated cases over `seeds` (fixture bytes), starting from `seed`.
pub fn run(seeds: &[Vec<u8>], n: usize, seed: u64) -> Counts {
    let mut rng = Rng::new(seed);
    let mut c = Counts::default();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for _ in 0..n {
        let src = &seeds[rng.below(seeds.len())];
        let case = mutate(src, &mut rng);
        c.cases += 1;
        match catch_unwind(AssertUnwindSafe(|| exercise(&case))) {
            Ok(Ok(())) => c.loaded += 1,
            Ok(Err(_)) => c.rejected += 1,
            Err(_) => c.panics += 1,
        }
    }
    std::panic::set_hook(prev);
    c
}

// ---------------------------------------------------------------------------------------------
// Structured mutations: one decoded fixture, one hostile edit at the ONNX level (the classes of
// issue 17's red-team set: huge/zero/negative dims, missing inputs, attributes of the wrong
// length or value, swapped op types, non-finite or truncated weights, odd opsets), then the
// whole `quantize` pipeline with its tract passes. Byte-level mutants rarely survive decoding;
// these reach every pass.

use isquant::onnx::pb;
use prost::Message;

const OPS: [&str; 16] = [
    "Conv",
    "MaxPool",
    "AveragePool",
    "Flatten",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "Add",
    "Mul",
    "Reshape",
    "Concat",
    "BatchNormalization",
    "GlobalAveragePool",
    "Softmax",
    "Transpose",
];
const ATTRS: [&str; 10] = [
    "strides",
    "pads",
    "kernel_shape",
    "dilations",
    "group",
    "axis",
    "perm",
    "auto_pad",
    "epsilon",
    "transB",
];

fn hostile_int(rng: &mut Rng) -> i64 {
    [
        0,
        -1,
        1,
        2,
        3,
        255,
        30_000,
        1 << 31,
        1 << 62,
        i64::MAX,
        i64::MIN,
    ][rng.below(11)]
}

/// Applies one structured mutation to a decoded model.
pub fn mutate_model(m: &mut pb::ModelProto, rng: &mut Rng) {
    let Some(g) = m.graph.as_mut() else { return };
    let n_nodes = g.node.len().max(1);
    match rng.below(12) {
        0 => {
            // a graph input dimension
            if let Some(vi) = g.input.first_mut() {
                if let Some(pb::type_proto::Value::TensorType(t)) =
                    vi.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    if let Some(s) = t.shape.as_mut() {
                        if !s.dim.is_empty() {
                            let k = rng.below(s.dim.len());
                            s.dim[k].value =
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(
                                    hostile_int(rng),
                                ));
                        }
                    }
                }
            }
        }
        1 => {
            // drop or blank a node input
            if let Some(node) = g.node.get_mut(rng.below(n_nodes)) {
                if !node.input.is_empty() {
                    let k = rng.below(node.input.len());
                    if rng.below(2) == 0 {
                        node.input.remove(k);
                    } else {
                        node.input[k] = String::new();
                    }
                }
            }
        }
        2 | 3 => {
            // an attribute of the wrong length or value
            if let Some(node) = g.node.get_mut(rng.below(n_nodes)) {
                let name = ATTRS[rng.below(ATTRS.len())];
                node.attribute.retain(|a| a.name.as_deref() != Some(name));
                let mut a = pb::AttributeProto {
                    name: Some(name.into()),
                    ..Default::default()
                };
                if rng.below(2) == 0 {
                    a.r#type = Some(pb::attribute_proto::AttributeType::Ints as i32);
                    a.ints = (0..rng.below(6)).map(|_| hostile_int(rng)).collect();
                } else {
                    a.r#type = Some(pb::attribute_proto::AttributeType::Int as i32);
                    a.i = Some(hostile_int(rng));
                }
                node.attribute.push(a);
            }
        }
        4 => {
            // another op type
            if let Some(node) = g.node.get_mut(rng.below(n_nodes)) {
                node.op_type = Some(OPS[rng.below(OPS.len())].into());
            }
        }
        5 => {
            // a non-finite or huge weight
            if !g.initializer.is_empty() {
                let k = rng.below(g.initializer.len());
                let t = &mut g.initializer[k];
                let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e36, 0.0][rng.below(5)];
                if let Some(raw) = t.raw_data.as_ref().filter(|r| r.len() >= 4) {
                    let mut raw = raw.to_vec();
                    let i = rng.below(raw.len() / 4) * 4;
                    raw[i..i + 4].copy_from_slice(&v.to_le_bytes());
                    t.raw_data = Some(raw.into());
                } else if !t.float_data.is_empty() {
                    let i = rng.below(t.float_data.len());
                    t.float_data[i] = v;
                }
            }
        }
        6 => {
            // a truncated or re-shaped weight
            if !g.initializer.is_empty() {
                let k = rng.below(g.initializer.len());
                let t = &mut g.initializer[k];
                if rng.below(2) == 0 {
                    if let Some(raw) = t.raw_data.as_ref() {
                        let keep = rng.below(raw.len().max(1));
                        t.raw_data = Some(raw.slice(..keep));
                    }
                } else if !t.dims.is_empty() {
                    let i = rng.below(t.dims.len());
                    t.dims[i] = hostile_int(rng);
                }
            }
        }
        7 => {
            // the data type of a weight
            if !g.initializer.is_empty() {
                let k = rng.below(g.initializer.len());
                g.initializer[k].data_type = Some(rng.below(24) as i32);
            }
        }
        8 => {
            // the default opset
            if let Some(o) = m.opset_import.first_mut() {
                o.version = Some([1, 6, 9, 10, 11, 13, 17, 21, 22, 99, -1][rng.below(11)]);
            }
        }
        9 => {
            // a node removed, or two swapped (dangling names, order)
            let i = rng.below(n_nodes);
            if rng.below(2) == 0 && i < g.node.len() {
                g.node.remove(i);
            } else {
                let j = rng.below(n_nodes);
                if i < g.node.len() && j < g.node.len() {
                    g.node.swap(i, j);
                }
            }
        }
        10 => {
            // an output renamed onto another value (duplicate producers, cycles)
            let i = rng.below(n_nodes);
            let j = rng.below(n_nodes);
            if i < g.node.len() && j < g.node.len() {
                if let (Some(a), Some(b)) = (
                    g.node[i].input.first().cloned(),
                    g.node[j].output.first_mut(),
                ) {
                    *b = a;
                }
            }
        }
        _ => {
            // a graph output dropped or pointed elsewhere
            if !g.output.is_empty() {
                let k = rng.below(g.output.len());
                if rng.below(2) == 0 {
                    g.output.remove(k);
                } else if let Some(node) = g.node.get(rng.below(n_nodes)) {
                    if let Some(o) = node.output.first() {
                        g.output[k].name = Some(o.clone());
                    }
                }
            }
        }
    }
}

/// `quantize` end to end on `bytes` as the CLI runs it (noise pass and guard in tract), with a
/// small noise batch so that a case takes milliseconds.
pub fn exercise_quantize(bytes: &[u8]) -> Result<(), isquant::Error> {
    let loaded = isquant::load_bytes(Bytes::copy_from_slice(bytes), Path::new("<fuzz>"), None)?;
    let cfg = isquant::pipeline::QuantizeConfig {
        noise_batch: 4,
        ..Default::default()
    };
    let opts = isquant::guard::GuardOptions {
        mode: isquant::guard::GuardMode::Report,
        per_family: Some(1),
        ..Default::default()
    };
    let (q, _, _) = isquant::guard::quantize(&loaded.model, &cfg, None, &opts, &mut |_| {})?;
    let _ = isquant::onnx::io::encode_model(&q.to_proto());
    Ok(())
}

/// Outcome counts of a structured run, with the slowest case.
#[derive(Debug, Default)]
pub struct QuantizeCounts {
    pub cases: usize,
    pub quantized: usize,
    pub rejected: usize,
    pub panics: usize,
    pub slowest: std::time::Duration,
    /// The slowest case's index (replay it with `ISQUANT_FUZZ_FROM`).
    pub slowest_case: usize,
    /// The first few cases over 20 s: (case index, seconds).
    pub slow_cases: Vec<(usize, f64)>,
    /// Chunks after which the process's peak memory grew by 256 MB or more:
    /// (first case of the chunk, peak kB after it).
    pub memory_steps: Vec<(usize, u64)>,
    /// The first few panics: (case index, message).
    pub panic_cases: Vec<(usize, String)>,
}

/// The process's peak resident memory (VmHWM), kB; 0 where /proc is not there.
pub fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Runs `n` structured mutants of `seeds` (fixture bytes) through [`exercise_quantize`], in
/// parallel (the mutants are drawn in order from one seeded generator, so a run is the same
/// whatever the thread count).
pub fn run_quantize(seeds: &[Vec<u8>], n: usize, seed: u64) -> QuantizeCounts {
    use rayon::prelude::*;
    let decoded: Vec<pb::ModelProto> = seeds
        .iter()
        .filter_map(|b| pb::ModelProto::decode(b.as_slice()).ok())
        .collect();
    let mut rng = Rng::new(seed);
    let mut c = QuantizeCounts::default();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // `ISQUANT_FUZZ_FROM=k` runs only cases ≥ k; the mutations of earlier cases are still
    // drawn, so case k is the same model as in a full run (to replay a chunk that aborted).
    let from: usize = std::env::var("ISQUANT_FUZZ_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut start = 0;
    while start < n {
        let chunk: Vec<(usize, Vec<u8>)> = (start..n.min(start + 256))
            .map(|i| {
                let mut m = decoded[rng.below(decoded.len())].clone();
                for _ in 0..1 + rng.below(2) {
                    mutate_model(&mut m, &mut rng);
                }
                (i, m.encode_to_vec())
            })
            .filter(|(i, _)| *i >= from)
            .collect();
        start = n.min(start + 256);
        if chunk.is_empty() {
            continue;
        }
        // `ISQUANT_FUZZ_SAVE=dir` writes each case run as `dir/case-<i>.onnx` (to look at a
        // slow or failing case with the CLI).
        if let Some(dir) = std::env::var_os("ISQUANT_FUZZ_SAVE") {
            for (i, bytes) in &chunk {
                let _ = std::fs::write(Path::new(&dir).join(format!("case-{i}.onnx")), bytes);
            }
        }
        let results: Vec<(usize, std::time::Duration, Result<bool, String>)> = chunk
            .par_iter()
            .map(|(i, bytes)| {
                let t = std::time::Instant::now();
                let r = match catch_unwind(AssertUnwindSafe(|| exercise_quantize(bytes))) {
                    Ok(r) => Ok(r.is_ok()),
                    Err(p) => Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_default()),
                };
                (*i, t.elapsed(), r)
            })
            .collect();
        if std::env::var_os("ISQUANT_FUZZ_PROGRESS").is_some() {
            eprintln!(
                "fuzz quantize: {start} of {n} cases, {} panics so far",
                c.panics
            );
        }
        let first = results.first().map_or(0, |r| r.0);
        let hwm = peak_kb();
        if hwm >= c.memory_steps.last().map_or(0, |m| m.1) + 256 * 1024 {
            c.memory_steps.push((first, hwm));
        }
        for (i, took, r) in results {
            c.cases += 1;
            if took > c.slowest {
                c.slowest = took;
                c.slowest_case = i;
            }
            if took.as_secs_f64() > 20.0 && c.slow_cases.len() < 10 {
                c.slow_cases.push((i, took.as_secs_f64()));
            }
            match r {
                Ok(true) => c.quantized += 1,
                Ok(false) => c.rejected += 1,
                Err(msg) => {
                    c.panics += 1;
                    if c.panic_cases.len() < 10 {
                        c.panic_cases.push((i, msg));
                    }
                }
            }
        }
    }
    std::panic::set_hook(prev);
    c
}
