//! Hostile files and flags (issue 17, rows S1–S3, D1–D4, W3, W4, H2): external data may not
//! leave the model's directory through a symbolic link, FIFOs and devices are refused instead
//! of read or replaced, no output lands on an input or another output, and a rewrite with
//! `--external-data` keeps the model and its data paired.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isquant::onnx::io::{self, ExternalData};

use crate::common::{fixture, isquant, proto, write_proto};

const EXT: &str = "fmnist-small-bn-external.onnx";
const EXT_DATA: &str = "fmnist-small-bn-external.onnx.data";

/// Every file in `dir` (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Makes a FIFO with `mkfifo`; `None` (and why, printed) when the tool is missing.
fn mkfifo(p: &Path) -> Option<()> {
    match Command::new("mkfifo").arg(p).status() {
        Ok(s) if s.success() => Some(()),
        other => {
            eprintln!("skipped: mkfifo unavailable or failed ({other:?})");
            None
        }
    }
}

/// Runs isquant, killing it after `limit` (a hang is a failure, not a stuck test run).
fn isquant_within(args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_isquant"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("isquant {args:?} still running after {limit:?} (hangs)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory `model/` holding the external-data fixture whose data file is replaced by
/// `link` (a symbolic link made by `make`), and `outside/` holding the real data (the
/// "secret"). Returns (tempdir, model dir, secret bytes).
#[cfg(unix)]
fn linked_model(
    make: impl FnOnce(&Path, &Path) -> PathBuf,
) -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let model_dir = root.path().join("model");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let secret = std::fs::read(fixture(EXT_DATA)).unwrap();
    std::fs::write(outside.join("secret.data"), &secret).unwrap();
    let model = make(&model_dir, &outside);
    (root, model_dir, model, secret)
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs the commands that read a model on a hostile one: each exits 2 naming the link, writes
/// nothing into the model directory, and no output holds the secret.
#[cfg(unix)]
fn assert_refused(model_dir: &Path, model: &Path, secret: &[u8]) {
    let before = listing(model_dir);
    let out = model_dir.join("q.onnx");
    let report = model_dir.join("r.json");
    for args in [
        vec!["inspect", model.to_str().unwrap()],
        vec![
            "quantize",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        vec![
            "convert",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    ] {
        let r = isquant(&args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("outside the model's directory"),
            "{}",
            r.stderr
        );
        assert!(!contains(r.stdout.as_bytes(), &secret[..64]));
        assert_eq!(listing(model_dir), before, "{args:?} wrote a file");
    }
}

/// S1: the data file is a symbolic link to a file outside the model's directory.
#[cfg(unix)]
#[test]
fn external_data_through_a_symlinked_file_is_refused() {
    let (_root, model_dir, model, secret) = linked_model(|dir, outside| {
        std::fs::copy(fixture(EXT), dir.join(EXT)).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.data"), dir.join(EXT_DATA)).unwrap();
        dir.join(EXT)
    });
    assert_refused(&model_dir, &model, &secret);
}

/// S1: the location goes through a symbolic link to a directory outside.
#[cfg(unix)]
#[test]
fn external_data_through_a_symlinked_directory_is_refused() {
    let (_root, model_dir, model, secret) = linked_model(|dir, outside| {
        let mut m = proto(EXT);
        for t in &mut m.graph.as_mut().unwrap().initializer {
            for e in &mut t.external_data {
                if e.key.as_deref() == Some("location") {
                    e.value = Some("dirlink/secret.data".into());
                }
            }
        }
        std::os::unix::fs::symlink(outside, dir.join("dirlink")).unwrap();
        write_proto(dir, "m.onnx", &m)
    });
    assert_refused(&model_dir, &model, &secret);
}

/// Links that stay inside the model's directory are fine (the rule is about where the bytes
/// are, not about links).
#[cfg(unix)]
#[test]
fn external_data_through_a_link_inside_the_directory_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(EXT), dir.path().join(EXT)).unwrap();
    std::fs::copy(fixture(EXT_DATA), dir.path().join("weights.bin")).unwrap();
    std::os::unix::fs::symlink("weights.bin", dir.path().join(EXT_DATA)).unwrap();
    let r = isquant(&["inspect", dir.path().join(EXT).to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// H2: a FIFO as the model, as its external data or as an input is an error, at once.
#[cfg(unix)]
#[test]
fn fifos_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("m.onnx");
    if mkfifo(&fifo).is_none() {
        return;
    }
    let limit = Duration::from_secs(20);
    let (code, err) = isquant_within(&["inspect", fifo.to_str().unwrap()], limit);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a FIFO"), "{err}");

    let ext_dir = dir.path().join("ext");
    std::fs::create_dir(&ext_dir).unwrap();
    std::fs::copy(fixture(EXT), ext_dir.join(EXT)).unwrap();
    mkfifo(&ext_dir.join(EXT_DATA)).unwrap();
    let (code, err) = isquant_within(&["inspect", ext_dir.join(EXT).to_str().unwrap()], limit);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FIFO"), "{err}");

    let npy = dir.path().join("x.npy");
    mkfifo(&npy).unwrap();
    let m = fixture("fmnist-small-bn.onnx");
    let (code, err) = isquant_within(
        &[
            "validate",
            m.to_str().unwrap(),
            m.to_str().unwrap(),
            npy.to_str().unwrap(),
        ],
        limit,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("FIFO"), "{err}");
}

/// S3: `-o` (or `--report`) naming a FIFO or a directory is refused and left as it was.
#[cfg(unix)]
#[test]
fn non_regular_outputs_are_refused_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.onnx");
    if mkfifo(&fifo).is_none() {
        return;
    }
    let m = fixture("fmnist-small-bn.onnx");
    let limit = Duration::from_secs(60);
    let (code, err) = isquant_within(
        &["convert", m.to_str().unwrap(), "-o", fifo.to_str().unwrap()],
        limit,
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a FIFO") && err.contains("refusing"),
        "{err}"
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let q = dir.path().join("q.onnx");
    let (code, err) = isquant_within(
        &[
            "quantize",
            m.to_str().unwrap(),
            "-o",
            q.to_str().unwrap(),
            "--report",
            fifo.to_str().unwrap(),
        ],
        limit,
    );
    assert_eq!(code, 2, "{err}");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let r = isquant(&["convert", m.to_str().unwrap(), "-o", sub.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(sub.is_dir());
    let mut left = listing(dir.path());
    left.retain(|f| f != "out.onnx" && f != "sub" && f != "q.onnx");
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

/// D1–D3: no output of a command may be an input or another output: `--report` on the input
/// (through another path), `--report` and `--json` on one file, `validate --json` on an input
/// array, `--save-tensors` over the labels file. Refused (exit 2) before anything is written.
#[test]
fn no_output_is_an_input_or_another_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.onnx");
    std::fs::copy(fixture("fmnist-small-bn.onnx"), &input).unwrap();
    let model_bytes = std::fs::read(&input).unwrap();
    let out = dir.path().join("q.onnx");
    let via = dir.path().join(".").join("m.onnx");
    let r = isquant(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        via.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("--report") && r.stderr.contains("the input model"));
    assert_eq!(std::fs::read(&input).unwrap(), model_bytes);

    let both = dir.path().join("r.json");
    let r = isquant(&[
        "quantize",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        both.to_str().unwrap(),
        "--validate",
        "--json",
        both.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("--json") && r.stderr.contains("--report"),
        "{}",
        r.stderr
    );
    assert!(!out.exists() && !both.exists());

    // An input array (given itself, or in a folder) may not be the metrics file.
    let npy_dir = dir.path().join("inputs");
    std::fs::create_dir(&npy_dir).unwrap();
    let npy = npy_dir.join("x.npy");
    isquant::data::write_npy(
        &npy,
        &isquant::rng::seeded_uniform(&[1, 1, 28, 28], 1, -1.0, 2.8),
    )
    .unwrap();
    let npy_bytes = std::fs::read(&npy).unwrap();
    for given in [&npy, &npy_dir] {
        let r = isquant(&[
            "validate",
            input.to_str().unwrap(),
            input.to_str().unwrap(),
            given.to_str().unwrap(),
            "--json",
            npy.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 2, "{}", r.stdout);
        assert!(
            r.stderr.contains("refusing to write --json"),
            "{}",
            r.stderr
        );
        assert_eq!(std::fs::read(&npy).unwrap(), npy_bytes);
    }

    // --save-tensors writes labels.txt: not over the --labels file.
    let labels = npy_dir.join("labels.txt");
    std::fs::write(&labels, "x.npy 3\n").unwrap();
    let r = isquant(&[
        "validate",
        input.to_str().unwrap(),
        input.to_str().unwrap(),
        npy.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--save-tensors",
        npy_dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("--save-tensors") && r.stderr.contains("--labels"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), "x.npy 3\n");
    assert_eq!(listing(&npy_dir), vec!["labels.txt", "x.npy"]);
}

/// The external data files in `dir` written for `name`.
fn data_files(dir: &Path, name: &str) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|f| f.starts_with(&format!("{name}.")) && f.ends_with(".data"))
        .collect()
}

/// D4, W3, W4: rewriting `-o` with `--external-data` writes the data under a fresh name, renames
/// the model last and then removes the data file the old model referenced: one pair, which
/// loads, and no temporary left; writing it inline afterwards removes the last data file.
#[test]
fn external_data_rewrites_keep_one_consistent_pair() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("fmnist-small-bn.onnx");
    let out = dir.path().join("q.onnx");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = isquant(&[
            "quantize",
            m.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--external-data",
            "--guard",
            "off",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let data = data_files(dir.path(), "q.onnx");
        assert_eq!(data.len(), 1, "{:?}", listing(dir.path()));
        assert_ne!(data[0], "q.onnx.data", "the data file needs a fresh name");
        assert!(!seen.contains(&data[0]), "{data:?} reused");
        seen.push(data[0].clone());
        assert_eq!(
            listing(dir.path()),
            vec!["q.onnx".to_string(), data[0].clone()]
        );
        let back = isquant::load(&out).unwrap();
        assert_eq!(back.info.external_files, data);
        let r = isquant(&[
            "validate",
            m.to_str().unwrap(),
            out.to_str().unwrap(),
            "--synthetic",
            "4",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = isquant(&[
        "convert",
        out.to_str().unwrap(),
        "-o",
        dir.path().join("inline.onnx").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The input's data file is never removed, even though a rewrite of `q.onnx` would.
    assert_eq!(data_files(dir.path(), "q.onnx"), vec![seen[1].clone()]);
    let r = isquant(&["convert", m.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        listing(dir.path()),
        vec!["inline.onnx".to_string(), "q.onnx".to_string()]
    );
}

/// W3: two writers of different models to one `-o --external-data` at the same time: what `-o`
/// names afterwards is always one of the two models, with its own weights.
#[test]
fn concurrent_external_writers_never_mix_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let a = isquant::load(&fixture("fmnist-small-bn.onnx"))
        .unwrap()
        .model;
    let mut b = a.clone();
    for t in a.graph.initializers() {
        if let Ok(f) = isquant::onnx::tensor::to_f32(t) {
            let doubled = f.mapv(|v| v * 2.0 + 1.0);
            b.graph.set_initializer(isquant::onnx::tensor::from_f32(
                t.name.as_deref().unwrap(),
                doubled,
            ));
        }
    }
    let (pa, pb) = (a.to_proto(), b.to_proto());
    let weights = |m: &isquant::graph::Model| {
        m.graph
            .initializers()
            .iter()
            .map(|t| isquant::onnx::tensor::to_array(t).unwrap())
            .collect::<Vec<_>>()
    };
    let (wa, wb) = (weights(&a), weights(&b));
    assert_ne!(wa, wb);
    for round in 0..30 {
        std::thread::scope(|s| {
            for p in [&pa, &pb] {
                let out = &out;
                s.spawn(move || {
                    io::write_model(p, out, ExternalData::Always, &[]).unwrap();
                });
            }
        });
        let got = weights(&isquant::load(&out).unwrap().model);
        assert!(got == wa || got == wb, "round {round}: mixed pair");
        assert!(
            !listing(dir.path())
                .iter()
                .any(|f| f.ends_with(".isquant-tmp")),
            "temporary left"
        );
    }
}
