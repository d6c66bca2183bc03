//! Prints a Ferrotrain CustomResourceDefinition as YAML: `crdgen` (TrainingJob) or
//! `crdgen sweep` (TrainingSweep).

fn main() -> std::process::ExitCode {
    let which = std::env::args().nth(1);
    let yaml = match which.as_deref() {
        None | Some("job") => ferrotrain_crds::crd::crd_yaml(),
        Some("sweep") => ferrotrain_crds::crd::sweep_crd_yaml(),
        Some(other) => {
            eprintln!("crdgen: unknown CRD {other:?}; use job or sweep");
            return std::process::ExitCode::FAILURE;
        }
    };
    match yaml {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
