//! The `isquant` command line: [`isquant::cli::main`] parses the flags, runs the command and
//! prints the error chain on failure. Exit codes: 0 ok, 1 a validation threshold or rule check
//! failed, 2 error, 3 the model was written but the accuracy guard failed.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(isquant::cli::main(std::env::args_os()))
}
