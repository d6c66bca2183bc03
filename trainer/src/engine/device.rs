//! Which device computes: CUDA when this build has the `cuda` feature, the CUDA driver library is
//! installed and a GPU is visible; the CPU otherwise. The decision is a pure function of what was
//! requested and what the probe found, so every branch is tested without a GPU.

use std::path::{Path, PathBuf};

use ferrotrain_crds::{Device, Precision};

/// Where the model runs and in which precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    /// Ferrotrain's CPU kernels, fp32.
    Cpu,
    /// burn's CUDA backend on GPU `index`, computing in `precision` with fp32 master weights.
    Cuda {
        /// Ordinal among the visible GPUs.
        index: usize,
        /// Compute precision.
        precision: Precision,
        /// `device: auto`: if the GPU engine fails to start, train on the CPU instead of exiting.
        cpu_fallback: bool,
    },
}

/// What the probe found on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// This binary was built with the `cuda` feature.
    pub cuda_built: bool,
    /// Where `libcuda.so.1` was found, if anywhere.
    pub driver_library: Option<PathBuf>,
    /// GPUs this process may use.
    pub visible_gpus: usize,
}

/// Why the requested device cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// `device: cuda` without a usable GPU.
    #[error("spec.trainer.device is cuda but {0}")]
    CudaUnavailable(String),
}

/// The device and precision to use, and a line for the log that says why.
pub fn select(
    requested: Device,
    precision: Precision,
    probe: &Probe,
) -> Result<(Compute, String), DeviceError> {
    let missing = if !probe.cuda_built {
        Some("this trainer was built without the cuda feature".to_string())
    } else if probe.driver_library.is_none() {
        Some("the CUDA driver library (libcuda.so.1) is not installed".to_string())
    } else if probe.visible_gpus == 0 {
        Some("no GPU is visible (check CUDA_VISIBLE_DEVICES and the nvidia.com/gpu limit)".into())
    } else {
        None
    };
    match (requested, missing) {
        (Device::Cpu, _) => Ok((
            Compute::Cpu,
            cpu_reason("device cpu was requested", precision),
        )),
        (Device::Auto, Some(why)) => Ok((Compute::Cpu, cpu_reason(&why, precision))),
        (Device::Cuda, Some(why)) => Err(DeviceError::CudaUnavailable(why)),
        (Device::Auto | Device::Cuda, None) => {
            let library = probe
                .driver_library
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string());
            Ok((
                Compute::Cuda {
                    index: 0,
                    precision,
                    cpu_fallback: requested == Device::Auto,
                },
                format!(
                    "compute device: CUDA GPU 0 of {} ({library}), {} compute, fp32 master weights",
                    probe.visible_gpus,
                    precision_name(precision)
                ),
            ))
        }
    }
}

fn cpu_reason(why: &str, precision: Precision) -> String {
    let mut line = format!("compute device: CPU with Ferrotrain's native kernels ({why})");
    if precision != Precision::Fp32 {
        line.push_str(&format!(
            "; {} was requested but the CPU computes in fp32",
            precision_name(precision)
        ));
    }
    line
}

fn precision_name(precision: Precision) -> &'static str {
    match precision {
        Precision::Fp32 => "fp32",
        Precision::Bf16 => "bf16",
        Precision::Fp16 => "fp16",
    }
}

/// Looks at this machine without loading anything: the driver library on the loader's paths and
/// the GPU device nodes, narrowed by `CUDA_VISIBLE_DEVICES`.
pub fn probe() -> Probe {
    probe_under(
        Path::new("/"),
        std::env::var("LD_LIBRARY_PATH").ok().as_deref(),
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    )
}

/// Library directories the dynamic loader searches on the distributions our images use. CUDA's
/// `compat` directory is not one of them: the loader finds it only through LD_LIBRARY_PATH or its
/// cache, which the probe reads too.
const LIBRARY_DIRS: [&str; 5] = [
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "usr/lib",
    "usr/local/nvidia/lib64",
];

/// `libcuda.so.1` as the loader cache (`/etc/ld.so.cache`, written by ldconfig) lists it: the
/// NVIDIA container toolkit may mount the driver into a directory known only to the cache.
fn from_loader_cache(root: &Path) -> Option<std::path::PathBuf> {
    let cache = std::fs::read(root.join("etc/ld.so.cache")).ok()?;
    cache
        .split(|byte| *byte == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter(|entry| entry.starts_with('/') && entry.ends_with("/libcuda.so.1"))
        .map(|entry| root.join(entry.trim_start_matches('/')))
        .find(|path| path.exists())
}

/// [`probe`] against a file system rooted at `root` (tests use a scratch directory).
pub fn probe_under(root: &Path, ld_library_path: Option<&str>, visible: Option<&str>) -> Probe {
    let from_env = ld_library_path
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| root.join(d.trim_start_matches('/')));
    let driver_library = from_env
        .chain(LIBRARY_DIRS.iter().map(|d| root.join(d)))
        .map(|dir| dir.join("libcuda.so.1"))
        .find(|path| path.exists())
        .or_else(|| from_loader_cache(root));
    let device_nodes = std::fs::read_dir(root.join("dev"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|name| {
                        name.strip_prefix("nvidia")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
                .count()
        })
        .unwrap_or(0);
    Probe {
        cuda_built: cfg!(feature = "cuda"),
        driver_library,
        visible_gpus: visible_gpus(device_nodes, visible),
    }
}

/// GPUs left after `CUDA_VISIBLE_DEVICES`: unset keeps all; empty, `-1` or `NoDevFiles` hides
/// all; a list keeps its entries up to the first invalid one, as the CUDA runtime does.
fn visible_gpus(device_nodes: usize, visible: Option<&str>) -> usize {
    match visible.map(str::trim) {
        None => device_nodes,
        Some("" | "-1" | "NoDevFiles" | "void" | "none") => 0,
        Some(list) => list
            .split(',')
            .map(str::trim)
            .take_while(|entry| {
                entry.starts_with("GPU-")
                    || entry.starts_with("MIG-")
                    || entry.parse::<usize>().is_ok_and(|i| i < device_nodes)
            })
            .count()
            .min(device_nodes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(gpus: usize) -> Probe {
        Probe {
            cuda_built: true,
            driver_library: Some("/usr/lib/x86_64-linux-gnu/libcuda.so.1".into()),
            visible_gpus: gpus,
        }
    }

    #[test]
    fn auto_takes_the_gpu_when_everything_is_there() {
        let (compute, line) = select(Device::Auto, Precision::Bf16, &found(2)).expect("selects");
        assert_eq!(
            compute,
            Compute::Cuda {
                index: 0,
                precision: Precision::Bf16,
                cpu_fallback: true,
            }
        );
        assert!(
            line.contains("CUDA GPU 0 of 2") && line.contains("bf16"),
            "{line}"
        );
    }

    #[test]
    fn auto_falls_back_to_the_cpu_and_says_why() {
        let cases = [
            (Probe::default(), "built without the cuda feature"),
            (
                Probe {
                    driver_library: None,
                    ..found(1)
                },
                "libcuda.so.1",
            ),
            (found(0), "no GPU is visible"),
        ];
        for (probe, why) in cases {
            let (compute, line) = select(Device::Auto, Precision::Bf16, &probe).expect("selects");
            assert_eq!(compute, Compute::Cpu);
            assert!(line.contains(why), "{line}");
            assert!(
                line.contains("bf16 was requested but the CPU computes in fp32"),
                "{line}"
            );
        }
    }

    #[test]
    fn cpu_is_always_honoured_and_cuda_never_falls_back() {
        let (compute, _) = select(Device::Cpu, Precision::Fp32, &found(1)).expect("selects");
        assert_eq!(compute, Compute::Cpu);
        let err = select(Device::Cuda, Precision::Fp32, &found(0)).expect_err("no GPU");
        assert!(
            err.to_string()
                .starts_with("spec.trainer.device is cuda but no GPU")
        );
        let err = select(Device::Cuda, Precision::Fp32, &Probe::default()).expect_err("no build");
        assert!(err.to_string().contains("without the cuda feature"));
    }

    #[test]
    fn the_probe_reads_the_loader_paths_and_device_nodes() {
        let root = std::env::temp_dir().join(format!("ferrotrain-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let empty = probe_under(&root, None, None);
        assert_eq!(
            (empty.driver_library.clone(), empty.visible_gpus),
            (None, 0)
        );

        std::fs::create_dir_all(root.join("opt/cuda/lib")).expect("dirs");
        std::fs::create_dir_all(root.join("dev")).expect("dirs");
        std::fs::write(root.join("opt/cuda/lib/libcuda.so.1"), b"").expect("lib");
        for node in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"] {
            std::fs::write(root.join("dev").join(node), b"").expect("node");
        }
        let probe = probe_under(&root, Some("/nowhere:/opt/cuda/lib"), None);
        assert_eq!(
            probe.driver_library,
            Some(root.join("opt/cuda/lib/libcuda.so.1"))
        );
        assert_eq!(probe.visible_gpus, 2);
        assert_eq!(probe_under(&root, None, None).driver_library, None);
        // CUDA's compat directory is not searched by the loader: not by the probe either.
        std::fs::create_dir_all(root.join("usr/local/cuda/compat")).expect("dirs");
        std::fs::write(root.join("usr/local/cuda/compat/libcuda.so.1"), b"").expect("lib");
        assert_eq!(probe_under(&root, None, None).driver_library, None);
        // A driver directory known only to the loader cache is found through the cache.
        std::fs::create_dir_all(root.join("etc")).expect("dirs");
        std::fs::write(
            root.join("etc/ld.so.cache"),
            b"glibc-ld.so.cache1.1\0libcuda.so.1\0/opt/cuda/lib/libcuda.so.1\0libc.so.6\0/lib/libc.so.6\0",
        )
        .expect("cache");
        assert_eq!(
            probe_under(&root, None, None).driver_library,
            Some(root.join("opt/cuda/lib/libcuda.so.1"))
        );
        assert_eq!(probe_under(&root, None, Some("1")).visible_gpus, 1);
        assert_eq!(probe_under(&root, None, Some("0,7,1")).visible_gpus, 1);
        assert_eq!(probe_under(&root, None, Some("")).visible_gpus, 0);
        assert_eq!(probe_under(&root, None, Some("-1")).visible_gpus, 0);
        assert_eq!(
            probe_under(&root, None, Some("GPU-5d7c2a1e,GPU-0a1b")).visible_gpus,
            2
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
