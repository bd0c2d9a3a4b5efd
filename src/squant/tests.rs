//! Unit tests of the SQuant kernel: the spec's worked example, the golden vectors, invariants,
//! and a literal transcription of the spec's pseudo-code as an oracle.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::rng::SplitMix64;
use ndarray::{Array3, Axis, ShapeBuilder};

const MODES: [Rounding; 5] = [
    Rounding::Nearest,
    Rounding::SquantE,
    Rounding::SquantK,
    Rounding::SquantC,
    Rounding::Squant,
];

/// Roughly Gaussian (Irwin–Hall of 4 uniforms), zero mean, from the crate's generator.
fn irwin_hall(rng: &mut SplitMix64) -> f64 {
    (0..4).map(|_| rng.unit_f64()).sum::<f64>() - 2.0
}

/// A layer like the spec's flow: Gaussian weights, per-tensor scale, `|x| ≤ qmax`.
fn random_layer(shape: (usize, usize, usize), qmax: i32, seed: u64) -> Array3<f32> {
    let mut rng = SplitMix64::new(seed);
    let w = Array3::from_shape_simple_fn(shape, || irwin_hall(&mut rng) as f32);
    let s = symmetric_scale(w.view(), qmax);
    let lim = qmax as f32;
    w.mapv(|v| (v / s).clamp(-lim, lim))
}

/// Literal transcription of the spec §2.3.2 pseudo-code (global priority arrays,
/// full stable sorts, `target_d` from the original rounding), used as an oracle.
fn reference(x: &Array3<f32>, qmin: i32, qmax: i32, mode: Rounding) -> Array3<i32> {
    let (o_n, i_n, k_n) = x.dim();
    let xs: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let n = xs.len();
    let q_orig: Vec<f64> = xs.iter().map(|v| v.round_ties_even()).collect();
    let mut q = q_orig.clone();
    let mut e: Vec<f64> = (0..n).map(|j| q[j] - xs[j]).collect();
    let can_up: Vec<bool> = (0..n)
        .map(|j| e[j] < 0.0 && xs[j] < f64::from(qmax))
        .collect();
    let can_down: Vec<bool> = (0..n)
        .map(|j| e[j] > 0.0 && xs[j] > f64::from(qmin))
        .collect();
    let can = |d: f64, j: usize| if d > 0.0 { can_up[j] } else { can_down[j] };
    let (mut use_k, use_c) = match mode {
        Rounding::Nearest | Rounding::SquantE => (false, false),
        Rounding::SquantK => (true, false),
        Rounding::SquantC => (false, true),
        Rounding::Squant => (true, true),
    };
    if k_n == 1 {
        use_k = false;
    }
    let mut pri_up = vec![0.0f64; n];
    let mut pri_down = vec![0.0f64; n];
    let by_prio = |p: &dyn Fn(usize) -> f64, list: &mut Vec<usize>| {
        list.sort_by(|&a, &b| p(b).partial_cmp(&p(a)).unwrap().then(a.cmp(&b)));
    };
    if use_k {
        for g in 0..o_n * i_n {
            let idx: Vec<usize> = (g * k_n..(g + 1) * k_n).collect();
            let s: f64 = idx.iter().fold(0.0, |a, &j| a + e[j]);
            if s == 0.0 {
                continue;
            }
            let d = if s < 0.0 { 1.0 } else { -1.0 };
            let mut c: Vec<usize> = idx.iter().copied().filter(|&j| can(d, j)).collect();
            let ec = e.clone();
            by_prio(&|j| ec[j].abs(), &mut c);
            let k = s.abs().round_ties_even();
            let f = (k as usize).min(c.len());
            for &j in &c[..f] {
                q[j] += d;
                e[j] += d;
            }
            if k >= s.abs() {
                if f > 0 {
                    let l = c[f - 1];
                    let p = if d > 0.0 { &mut pri_down } else { &mut pri_up };
                    p[l] = e[l].abs();
                }
            } else if (k as usize) < c.len() {
                let nx = c[k as usize];
                let p = if d > 0.0 { &mut pri_up } else { &mut pri_down };
                p[nx] = e[nx].abs();
            }
        }
    } else {
        for j in 0..n {
            pri_up[j] = if can_up[j] { e[j].abs() } else { 0.0 };
            pri_down[j] = if can_down[j] { e[j].abs() } else { 0.0 };
        }
    }
    if use_c {
        let len = i_n * k_n;
        for o in 0..o_n {
            let idx: Vec<usize> = (o * len..(o + 1) * len).collect();
            let s: f64 = idx.iter().fold(0.0, |a, &j| a + e[j]);
            if s == 0.0 {
                continue;
            }
            let d = if s < 0.0 { 1.0 } else { -1.0 };
            let pri = if d > 0.0 { &pri_up } else { &pri_down };
            let mut c: Vec<usize> = idx.iter().copied().filter(|&j| pri[j] > 0.0).collect();
            by_prio(&|j| pri[j], &mut c);
            let k = s.abs().round_ties_even() as usize;
            for &j in c.iter().take(k) {
                q[j] = if can(d, j) { q_orig[j] + d } else { q_orig[j] };
                e[j] = q[j] - xs[j];
            }
        }
    }
    let out: Vec<i32> = q.iter().map(|&v| (v as i32).clamp(qmin, qmax)).collect();
    Array3::from_shape_vec((o_n, i_n, k_n), out).unwrap()
}

fn codes(v: &serde_json::Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap() as i32)
        .collect()
}

#[test]
fn golden_vectors_match_every_mode() {
    let text = include_str!("../../fixtures/golden/squant-golden-vectors.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 28);
    let modes = [
        ("rtn", Rounding::Nearest),
        ("rtn", Rounding::SquantE),
        ("k_only", Rounding::SquantK),
        ("c_only", Rounding::SquantC),
        ("k_then_c", Rounding::Squant),
    ];
    let mut passed = 0;
    for (n, case) in cases.iter().enumerate() {
        let shape = codes(&case["shape_OIK"]);
        let shape = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
        let qmin = case["qmin"].as_i64().unwrap() as i32;
        let qmax = case["qmax"].as_i64().unwrap() as i32;
        let x: Vec<f32> = case["x"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let x = Array3::from_shape_vec(shape, x).unwrap();
        for (key, mode) in modes {
            let expected = codes(&case[key]);
            let (q, _) = round_squant(x.view(), qmin, qmax, mode);
            let got: Vec<i32> = q.iter().copied().collect();
            assert_eq!(got, expected, "case {n} {shape:?} mode {mode:?} ({key})");
            passed += 1;
        }
        let rtn: Vec<i32> = round_nearest(x.view(), qmin, qmax)
            .iter()
            .copied()
            .collect();
        assert_eq!(rtn, codes(&case["rtn"]), "case {n} round_nearest");
    }
    assert_eq!(passed, 28 * 5);
}

fn layer(shape: (usize, usize, usize), x: &[f32]) -> Array3<f32> {
    Array3::from_shape_vec(shape, x.to_vec()).unwrap()
}

fn run(x: &Array3<f32>, mode: Rounding) -> Vec<i32> {
    round_squant(x.view(), -127, 127, mode)
        .0
        .iter()
        .copied()
        .collect()
}

#[test]
fn worked_example_conv_matches_spec() {
    let x = layer(
        (1, 2, 4),
        &[-2.02, 1.48, -1.54, 0.56, -0.74, 1.41, 0.21, -0.63],
    );
    assert_eq!(run(&x, Rounding::Nearest), [-2, 1, -2, 1, -1, 1, 0, -1]);
    assert_eq!(run(&x, Rounding::SquantK), [-2, 1, -2, 1, -1, 2, 0, -1]);
    assert_eq!(run(&x, Rounding::SquantC), [-2, 2, -1, 1, -1, 1, 0, -1]);
    let (q, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
    assert_eq!(
        q.iter().copied().collect::<Vec<_>>(),
        [-2, 2, -2, 1, -1, 2, 0, -1]
    );
    let expected = FlipStats {
        elements: 8,
        kernel_flips: 1,
        channel_flips: 1,
        channel_undos: 0,
        changed: 2,
    };
    assert_eq!(stats, expected);
    let residual: f64 = q
        .iter()
        .zip(&x)
        .map(|(&q, &x)| f64::from(q) - f64::from(x))
        .sum();
    assert!(
        (residual - 0.27).abs() < 1e-6,
        "channel residual {residual}"
    );
}

#[test]
fn worked_example_linear_matches_spec() {
    let x = layer(
        (2, 5, 1),
        &[0.74, 1.45, 1.77, 2.65, 1.44, 2.53, -2.83, -0.21, 2.66, 0.89],
    );
    assert_eq!(run(&x, Rounding::Nearest), [1, 1, 2, 3, 1, 3, -3, 0, 3, 1]);
    assert_eq!(run(&x, Rounding::SquantK), [1, 1, 2, 3, 1, 3, -3, 0, 3, 1]);
    assert_eq!(run(&x, Rounding::Squant), [1, 1, 2, 3, 1, 2, -3, 0, 3, 1]);
    assert_eq!(run(&x, Rounding::SquantC), run(&x, Rounding::Squant));
}

#[test]
fn ties_round_half_to_even() {
    for (v, r) in [
        (0.5, 0.0),
        (1.5, 2.0),
        (2.5, 2.0),
        (-0.5, 0.0),
        (-1.5, -2.0),
    ] {
        assert_eq!(rne(v), r, "rne({v})");
    }
    let mut rng = SplitMix64::new(7);
    for _ in 0..100_000 {
        let v = (irwin_hall(&mut rng) * 10f64.powi((rng.unit_f64() * 12.0) as i32 - 3)) as f32;
        let v = f64::from(v);
        assert_eq!(rne(v), v.round_ties_even(), "rne({v})");
        let h = (v * 2.0).round() / 2.0; // exact halves
        assert_eq!(rne(h), h.round_ties_even(), "rne({h})");
    }
    for v in [
        1e20,
        -1e20,
        2f64.powi(51) + 1.0,
        2f64.powi(52) + 1.0,
        f64::INFINITY,
    ] {
        assert_eq!(rne(v), v.round_ties_even(), "rne({v})");
    }
    let edges = [
        0.0,
        -0.0,
        0.5,
        -0.5,
        2147483520.0,
        -2147483648.0,
        2147483648.0,
        3e9,
    ];
    for v in edges
        .into_iter()
        .chain([-3e9, f64::NAN, f64::INFINITY, -1e300])
    {
        let (r, q) = rne_pair(v);
        assert_eq!(q, v.round_ties_even() as i32, "rne_pair({v})");
        assert!(r == v.round_ties_even() || v.is_nan(), "rne_pair({v})");
    }
    for _ in 0..100_000 {
        let v = f64::from((irwin_hall(&mut rng) * 3e9) as f32);
        assert_eq!(
            rne_pair(v),
            (v.round_ties_even(), v.round_ties_even() as i32)
        );
        let v = f64::from((irwin_hall(&mut rng) * 300.0) as f32);
        assert_eq!(
            rne_pair(v),
            (v.round_ties_even(), v.round_ties_even() as i32)
        );
    }
    // |S| = 0.5 gives k = 0 (no flip); |S| = 1.5 and 2.5 give k = 2.
    let x = layer((1, 1, 2), &[0.25, 0.25]); // S = −0.5
    assert_eq!(run(&x, Rounding::SquantK), [0, 0]);
    let x = layer((1, 1, 4), &[0.25, 0.25, 0.5, 0.5]); // e = −.25 −.25 −.5 −.5 (RTN 0 0 0 0)
    assert_eq!(run(&x, Rounding::Nearest), [0, 0, 0, 0]);
    assert_eq!(run(&x, Rounding::SquantK), [0, 0, 1, 1]); // S = −1.5 → k = 2
    let x = layer((1, 1, 5), &[0.5; 5]); // S = −2.5 → k = 2, equal priorities
    assert_eq!(run(&x, Rounding::SquantK), [1, 1, 0, 0, 0]); // lower index first
}

#[test]
fn equal_priorities_prefer_lower_index_in_channel_stage() {
    let x = layer((1, 6, 1), &[2.5, 0.5, 4.5, 6.5, 8.5, 10.5]);
    // RTN = 2 0 4 6 8 10, e = −0.5 each, S = −3 → k = 3, all priorities 0.5.
    assert_eq!(run(&x, Rounding::Squant), [3, 1, 5, 6, 8, 10]);
    assert_eq!(
        round_squant(x.view(), -127, 127, Rounding::Squant).0,
        reference(&x, -127, 127, Rounding::Squant)
    );
}

/// Shapes: Gemm (K = 1), depthwise (I = 1), O = 1, 3×3, 5×5, 1×2 and tiny.
const SHAPES: [(usize, usize, usize); 9] = [
    (8, 16, 9),
    (5, 64, 1),
    (16, 1, 9),
    (1, 12, 9),
    (1, 40, 1),
    (3, 4, 25),
    (6, 7, 2),
    (1, 1, 1),
    (2, 3, 4),
];

fn kernel_sums(q: &Array3<i32>, x: &Array3<f32>) -> Vec<f64> {
    let q_rows = q.rows().into_iter();
    q_rows
        .zip(x.rows())
        .map(|(qk, xk)| {
            qk.iter()
                .zip(&xk)
                .map(|(&q, &x)| f64::from(q) - f64::from(x))
                .sum()
        })
        .collect()
}

fn channel_sums(q: &Array3<i32>, x: &Array3<f32>) -> Vec<f64> {
    q.outer_iter()
        .zip(x.outer_iter())
        .map(|(qo, xo)| {
            qo.iter()
                .zip(&xo)
                .map(|(&q, &x)| f64::from(q) - f64::from(x))
                .sum()
        })
        .collect()
}

#[test]
fn outputs_are_floor_or_ceil_and_within_grid() {
    for (s, &shape) in SHAPES.iter().enumerate() {
        for (qmin, qmax) in [(-127, 127), (-128, 127), (-8, 7)] {
            let x = random_layer(shape, qmax, 100 + s as u64);
            for mode in MODES {
                let (q, stats) = round_squant(x.view(), qmin, qmax, mode);
                assert_eq!(stats.elements as usize, x.len());
                let rtn = round_nearest(x.view(), qmin, qmax);
                let mut changed = 0;
                for ((&q, &x), &r) in q.iter().zip(&x).zip(&rtn) {
                    let (lo, hi) = (x.floor() as i32, x.ceil() as i32);
                    let ok = q == lo.clamp(qmin, qmax) || q == hi.clamp(qmin, qmax);
                    assert!(ok, "{shape:?} {mode:?}: x={x} q={q}");
                    assert!((qmin..=qmax).contains(&q));
                    changed += u64::from(q != r);
                }
                assert_eq!(changed, stats.changed, "{shape:?} {mode:?}");
            }
        }
    }
}

#[test]
fn kernel_stage_bounds_kernel_error_sums() {
    for (s, &shape) in SHAPES.iter().enumerate() {
        for seed in 0..20 {
            let x = random_layer(shape, 127, 1000 * s as u64 + seed);
            let (q, _) = round_squant(x.view(), -127, 127, Rounding::SquantK);
            if shape.2 == 1 {
                assert_eq!(q, round_nearest(x.view(), -127, 127)); // K stage skipped
                continue;
            }
            for sum in kernel_sums(&q, &x) {
                assert!(sum.abs() <= 0.5 + 1e-9, "{shape:?} seed {seed}: {sum}");
            }
        }
    }
}

#[test]
fn full_squant_bounds_channel_and_kernel_error_sums() {
    for (s, &shape) in SHAPES.iter().enumerate() {
        for seed in 0..20 {
            let x = random_layer(shape, 127, 2000 * s as u64 + seed);
            let (q, _) = round_squant(x.view(), -127, 127, Rounding::Squant);
            for sum in channel_sums(&q, &x) {
                assert!(sum.abs() <= 0.5 + 1e-9, "{shape:?} seed {seed}: {sum}");
            }
            if shape.2 > 1 {
                for sum in kernel_sums(&q, &x) {
                    assert!(sum.abs() < 1.0, "{shape:?} seed {seed}: {sum}");
                }
            }
            let (qc, _) = round_squant(x.view(), -127, 127, Rounding::SquantC);
            for sum in channel_sums(&qc, &x) {
                assert!(
                    sum.abs() <= 0.5 + 1e-9,
                    "C only {shape:?} seed {seed}: {sum}"
                );
            }
        }
    }
}

#[test]
fn depthwise_channel_stage_is_a_no_op_after_kernel_stage() {
    for seed in 0..20 {
        let x = random_layer((16, 1, 9), 127, 300 + seed);
        let (k, _) = round_squant(x.view(), -127, 127, Rounding::SquantK);
        let (kc, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
        assert_eq!(k, kc);
        assert_eq!(stats.channel_flips, 0);
    }
}

#[test]
fn one_by_one_kernels_run_only_the_channel_stage() {
    let x = random_layer((5, 64, 1), 127, 77);
    let (full, stats) = round_squant(x.view(), -127, 127, Rounding::Squant);
    assert_eq!(full, round_squant(x.view(), -127, 127, Rounding::SquantC).0);
    assert_eq!(stats.kernel_flips, 0);
}

#[test]
fn integer_inputs_are_unchanged() {
    let mut rng = SplitMix64::new(5);
    for &shape in &SHAPES {
        let x =
            Array3::from_shape_simple_fn(shape, || (rng.unit_f64() * 254.0 - 127.0).round() as f32);
        for mode in MODES {
            let (q, stats) = round_squant(x.view(), -127, 127, mode);
            assert_eq!(q, x.mapv(|v| v as i32), "{shape:?} {mode:?}");
            assert_eq!(stats.changed, 0);
        }
    }
    let zeros = Array3::<f32>::zeros((3, 4, 9));
    assert_eq!(symmetric_scale(zeros.view(), 127), 1.0);
    let (q, _) = round_squant(zeros.view(), -127, 127, Rounding::Squant);
    assert!(q.iter().all(|&v| v == 0));
}

/// Differential test against the literal pseudo-code, including exact halves,
/// duplicated values and elements beyond the grid (asymmetric bounds, D2).
#[test]
fn matches_literal_pseudo_code() {
    let mut rng = SplitMix64::new(99);
    for case in 0..600u64 {
        let shape = SHAPES[(case % SHAPES.len() as u64) as usize];
        let (qmin, qmax) = [(-127, 127), (-128, 127), (-8, 7), (-2, 1)][(case % 4) as usize];
        let span = f64::from(qmax) + 0.7;
        let x = Array3::from_shape_simple_fn(shape, || {
            let v = (rng.unit_f64() * 2.0 - 1.0) * span;
            match rng.next_u64() % 5 {
                0 => ((v * 2.0).round() / 2.0) as f32, // exact ties
                1 => 0.25,                             // duplicates
                _ => v as f32,
            }
        });
        for mode in MODES {
            let (q, _) = round_squant(x.view(), qmin, qmax, mode);
            assert_eq!(
                q,
                reference(&x, qmin, qmax, mode),
                "case {case} {mode:?} {x:?}"
            );
        }
    }
}

#[test]
fn identical_for_one_or_four_threads() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let four = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    for (s, &shape) in SHAPES.iter().chain(&[(64, 32, 9)]).enumerate() {
        let x = random_layer(shape, 127, 500 + s as u64);
        for mode in MODES {
            let a = one.install(|| round_squant(x.view(), -127, 127, mode));
            let b = four.install(|| round_squant(x.view(), -127, 127, mode));
            assert_eq!(a, b, "{shape:?} {mode:?}");
        }
    }
}

#[test]
fn non_standard_layouts_give_the_same_codes() {
    let x = random_layer((6, 5, 9), 127, 11);
    let mut fortran = Array3::<f32>::zeros((6, 5, 9).f());
    fortran.assign(&x);
    let every_other = ndarray::Slice::new(0, None, 2);
    let strided = x.slice_axis(Axis(1), every_other).to_owned();
    for mode in MODES {
        assert_eq!(
            round_squant(x.view(), -127, 127, mode),
            round_squant(fortran.view(), -127, 127, mode)
        );
        let view = x.slice_axis(Axis(1), every_other);
        assert_eq!(
            round_squant(view, -127, 127, mode),
            round_squant(strided.view(), -127, 127, mode)
        );
    }
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let empty = Array3::<f32>::zeros((0, 3, 9));
    let none = Array3::<f32>::zeros((4, 0, 9));
    for mode in MODES {
        assert_eq!(
            round_squant(empty.view(), -127, 127, mode).0.dim(),
            (0, 3, 9)
        );
        assert_eq!(
            round_squant(none.view(), -127, 127, mode).0.dim(),
            (4, 0, 9)
        );
    }
    let x = layer(
        (1, 2, 4),
        &[
            f32::NAN,
            1.4,
            f32::INFINITY,
            -0.6,
            f32::NEG_INFINITY,
            3e9,
            -3e9,
            0.5,
        ],
    );
    for mode in MODES {
        let (q, _) = round_squant(x.view(), -127, 127, mode);
        assert!(q.iter().all(|v| (-127..=127).contains(v)));
        let (q, _) = round_squant(x.view(), 127, -127, mode); // swapped bounds
        assert!(q.iter().all(|v| (-127..=127).contains(v)));
    }
    assert_eq!(round_nearest(x.view(), -127, 127)[[0, 0, 0]], 0);
}

#[test]
fn symmetric_scale_follows_spec() {
    assert_eq!(symmetric_qmax(8), 127);
    assert_eq!(symmetric_qmax(7), 63);
    assert_eq!(symmetric_qmax(4), 7);
    let w = layer((1, 1, 4), &[0.5, -2.54, 1.0, f32::NAN]);
    let s = symmetric_scale(w.view(), 127);
    assert_eq!(s, (2.54f32 as f64 / 127.0) as f32);
    let x = w.mapv(|v| v / s);
    assert!((x[[0, 0, 1]] + 127.0).abs() < 1e-4);
    let tiny = layer((1, 1, 1), &[1e-45]);
    assert!(symmetric_scale(tiny.view(), 127) > 0.0);
}

#[test]
fn stats_add_up() {
    let x = random_layer((32, 16, 9), 127, 8);
    let (_, total) = round_squant(x.view(), -127, 127, Rounding::Squant);
    let mut sum = FlipStats::default();
    for o in 0..32 {
        let xo = x.slice_axis(Axis(0), ndarray::Slice::from(o..o + 1));
        sum += round_squant(xo, -127, 127, Rounding::Squant).1;
    }
    assert_eq!(sum, total);
    assert!(total.changed > 0 && total.changed < total.elements / 10);
    assert!(total.kernel_flips > 0 && total.channel_flips > 0);
}
