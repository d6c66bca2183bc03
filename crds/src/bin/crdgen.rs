//! Prints the TrainingJob CustomResourceDefinition as YAML.

fn main() -> std::process::ExitCode {
    match ferrotrain_crds::crd::crd_yaml() {
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
