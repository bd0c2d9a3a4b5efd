//! Inputs for the forward passes the pipeline runs on the float model (the noise pass of the
//! activation ranges, the float-change check of `--relu6 relu`): the input shape, and seeded
//! batches of it.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::graph::Model;

/// The shape of the model's one input for a forward pass: `input_shape` if given, else the
/// declared shape; only the batch dimension may stay open (`None`).
///
/// # Errors
/// Several inputs, or dimensions other than the batch left open without `input_shape`.
pub fn forward_shape(model: &Model, input_shape: Option<&[usize]>) -> Result<Vec<Option<usize>>> {
    let (name, dims) = model.graph.single_input("the forward pass")?;
    let shape: Vec<Option<usize>> = match input_shape {
        Some(s) => s.iter().map(|&d| Some(d)).collect(),
        None => dims,
    };
    if shape.is_empty() || shape.iter().skip(1).any(Option::is_none) {
        let shown: Vec<String> = shape
            .iter()
            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
            .collect();
        return Err(Error::Config(format!(
            "input `{name}` has shape [{}]: give the shape for the forward pass with --input-shape {}",
            shown.join(", "),
            shape_hint(&shape)
        )));
    }
    Ok(shape)
}

/// An `--input-shape` value for a shape with open dimensions: the known ones kept, the batch 1,
/// the open ones named (`H`, `W` in the last two places of a 4-D input, else `D<k>`), so the hint
/// fits the model instead of always reading `1,3,224,224`.
fn shape_hint(shape: &[Option<usize>]) -> String {
    let rank = shape.len();
    if rank == 0 {
        return "1,C,H,W".to_string();
    }
    let dims: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(k, d)| match (k, d) {
            (_, Some(v)) => v.to_string(),
            (0, None) => "1".to_string(),
            (k, None) if rank == 4 && k == 2 => "H".to_string(),
            (k, None) if rank == 4 && k == 3 => "W".to_string(),
            (k, None) => format!("D{k}"),
        })
        .collect();
    let open = shape.iter().skip(1).any(Option::is_none);
    if open {
        format!("{} (the open dimensions filled in)", dims.join(","))
    } else {
        dims.join(",")
    }
}

/// The largest fixed batch a forward pass runs as declared.
pub const MAX_FIXED_BATCH: usize = 256;

/// Inputs for a forward pass: `count` samples of the model's input shape, in batches of
/// `chunk` where the batch dimension is open, else runs of the fixed batch. Values from
/// `fill(shape, batch index)`.
///
/// # Errors
/// As [`forward_shape`].
pub fn forward_batches(
    model: &Model,
    input_shape: Option<&[usize]>,
    count: usize,
    chunk: usize,
    mut fill: impl FnMut(&[usize], usize) -> ArrayD<f32>,
) -> Result<Vec<Vec<ArrayD<f32>>>> {
    let shape = forward_shape(model, input_shape)?;
    let fixed_batch = shape[0];
    let rest: Vec<usize> = shape.iter().skip(1).map(|d| d.unwrap_or(1)).collect();
    // A fixed batch runs whole: a model declaring a batch of 30,000 made the pass run 30,000
    // images at once, and tract's activations for them took 3 GB although the inputs were
    // within the element budget (found by the quantize fuzzer). Past a few hundred, ask for a
    // smaller batch instead.
    if let Some(b) = fixed_batch.filter(|&b| b > MAX_FIXED_BATCH) {
        let mut hint = vec![count.min(8).to_string()];
        hint.extend(rest.iter().map(ToString::to_string));
        return Err(Error::Config(format!(
            "the model input declares a batch of {b}: the forward pass would run {b} inputs at once (at most {MAX_FIXED_BATCH}); give --input-shape {}",
            hint.join(",")
        )));
    }
    // Every batch is kept until the statistics are taken: the whole set must fit the budget.
    let total = match fixed_batch {
        Some(b) => count.div_ceil(b.max(1)).saturating_mul(b.max(1)),
        None => count,
    };
    crate::limits::elements(
        &format!("{total} forward-pass inputs of shape {rest:?} (fewer with --noise-batch, or give --input-shape)"),
        total,
        &rest,
    )?;
    let mut out = Vec::new();
    let mut done = 0usize;
    let mut k = 0usize;
    while done < count {
        let n = match fixed_batch {
            Some(b) => b.max(1),
            None => chunk.min(count - done).max(1),
        };
        let mut s = vec![n];
        s.extend(&rest);
        out.push(vec![fill(&s, k)]);
        done += n;
        k += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::shape_hint;

    #[test]
    fn hint_keeps_the_known_dimensions() {
        assert_eq!(
            shape_hint(&[None, Some(3), Some(48), None]),
            "1,3,48,W (the open dimensions filled in)"
        );
        assert_eq!(
            shape_hint(&[None, Some(3), None, None]),
            "1,3,H,W (the open dimensions filled in)"
        );
        assert_eq!(
            shape_hint(&[Some(1), None, Some(8)]),
            "1,D1,8 (the open dimensions filled in)"
        );
    }
}
