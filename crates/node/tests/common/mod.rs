//! Helpers for tests that need real network namespaces (root and iproute2). Every namespace
//! and directory made here is removed on drop, also when the test fails; names carry the
//! process id so leftovers of a killed run are removed by the next one.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prefix of the namespaces these tests create.
pub const PREFIX: &str = "strait-nodetest-";

/// `Some(reason)` when this machine cannot run the test.
pub fn unsupported() -> Option<String> {
    strait_testbed::check_host().err()
}

/// Runs `ip ARGS`; panics with its error output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces left by earlier runs whose process is gone.
pub fn clean_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct TestNs {
    pub name: String,
    deleted: bool,
}

impl TestNs {
    /// A namespace with loopback up and an `eth0` holding `address` when given
    /// (as a network plugin would configure a pod).
    pub fn new(tag: &str, address: Option<Ipv4Addr>) -> TestNs {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = TestNs {
            name,
            deleted: false,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // A veth pair with both ends inside (no dummy driver needed).
        ip(&[
            "-n", &ns.name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "peer0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        if let Some(address) = address {
            ns.add_address(address);
        }
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn handle(&self) -> strait_netns::NetNs {
        strait_netns::NetNs::named(&self.name).expect("namespace opens")
    }

    pub fn add_address(&self, address: Ipv4Addr) {
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "eth0",
        ]);
    }

    /// What the network plugin's DEL does: the pod's interface goes away.
    pub fn remove_interface(&self) {
        ip(&["-n", &self.name, "link", "del", "eth0"]);
    }

    pub fn delete(&mut self) {
        if !self.deleted {
            self.deleted = true;
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A private directory of namespace files (symlinks to `/run/netns/...`), as the runtime's
/// directory would look, removed on drop.
pub struct NetnsDir(pub PathBuf);

impl NetnsDir {
    pub fn new(tag: &str) -> NetnsDir {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        NetnsDir(path)
    }

    /// Lists `target` under `name`, like the runtime's `cni-<uuid>` files.
    pub fn link(&self, name: &str, target: &Path) {
        std::os::unix::fs::symlink(target, self.0.join(name)).unwrap();
    }

    pub fn unlink(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }
}

impl Drop for NetnsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
