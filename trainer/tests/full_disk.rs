//! A checkpoint commit on a full disk fails cleanly and takes back what it wrote: no data
//! object and no directory of the failed commit stays behind to fill the disk further, and
//! once there is room the next commit succeeds. Mounts a 300 KiB tmpfs, so it needs root;
//! scripts/test.sh runs it with `--ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrotrain_trainer::checkpoint::layout::{Snapshot, TrainingState};
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::storage::{self, S3Options};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferrotrain-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a tmpfs needs root");
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.clone());
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    out.sort();
    out
}

fn snapshot(values: usize) -> Snapshot {
    Snapshot {
        state: TrainingState {
            step: 10,
            world_size: 1,
            ..TrainingState::default()
        },
        params: vec![0.5; values],
        moment1: vec![0.25; values],
        moment2: vec![0.125; values],
        mask: Vec::new(),
    }
}

#[test]
#[ignore = "mounts a tmpfs (root); scripts/test.sh runs it"]
fn a_commit_on_a_full_disk_leaves_nothing_behind() {
    let disk = Tmpfs::mount("300k");
    let uri = format!("file://{}/ckpt", disk.0.display());
    let store = CheckpointStore::new(
        storage::open(&uri, &S3Options::default()).expect("location"),
        3,
        "cfg",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Three objects of 120 KB: two fit, the third does not.
    let failed = runtime.block_on(store.commit(&snapshot(30_000)));
    let error = failed.expect_err("the disk is full").to_string();
    assert!(error.contains("No space left on device"), "{error}");
    let root = disk.0.join("ckpt");
    let left: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| p != &root.join("data"))
        .collect();
    assert!(left.is_empty(), "a failed commit left {left:?}");
    // With room again, a commit goes through.
    let committed = runtime
        .block_on(store.commit(&snapshot(10_000)))
        .expect("fits");
    assert_eq!(committed.step, 10);
    assert_eq!(
        runtime
            .block_on(store.load_latest())
            .expect("reads")
            .map(|(s, _)| s.params.len()),
        Some(10_000)
    );
}
