//! A directory laid out as Kubernetes mounts a ConfigMap or a Secret.

use std::{
    cell::Cell,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

/// A directory as kubelet's atomic writer keeps a ConfigMap or Secret volume:
/// each file is a symlink through `..data` to a timestamped directory, and an
/// update writes a new directory and swaps `..data` to it in one rename, so a
/// reader never sees half an update — nor a file whose own time changed.
pub struct MountedVolume {
    dir: tempfile::TempDir,
    generation: Cell<u32>,
}

impl MountedVolume {
    /// A volume holding `files` (name, contents).
    pub fn new(files: &[(&str, &str)]) -> MountedVolume {
        let volume = MountedVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: Cell::new(0),
        };
        volume.update(files);
        volume
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path of file `name`, as a program in the pod opens it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces every file at once, as kubelet does when the object changes.
    pub fn update(&self, files: &[(&str, &str)]) {
        let previous = self.generation.get();
        let generation = previous + 1;
        self.generation.set(generation);
        let data = format!("..2026_12_05_00_00_00.{generation}");
        std::fs::create_dir(self.dir.path().join(&data)).unwrap();
        for (name, contents) in files {
            std::fs::write(self.dir.path().join(&data).join(name), contents).unwrap();
        }
        let staging = self.dir.path().join("..data_tmp");
        symlink(&data, &staging).unwrap();
        std::fs::rename(&staging, self.dir.path().join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.path().join(name);
            if link.symlink_metadata().is_err() {
                symlink(Path::new("..data").join(name), link).unwrap();
            }
        }
        if previous > 0 {
            let old = self.dir.path().join(format!("..2026_12_05_00_00_00.{previous}"));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}
