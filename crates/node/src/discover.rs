//! Finding a pod's network namespace by its IP address.
//!
//! In a cluster the mesh config does not name the pods' network namespaces: the controller only
//! knows the pods' addresses. The container runtime keeps one file per pod namespace in a
//! directory (`/run/netns/cni-…`, which the node proxy's DaemonSet mounts from the host), so the
//! node proxy finds a pod by entering each namespace file there and listing its interface
//! addresses: the namespace that holds the pod's IP is the pod's.
//!
//! Entering a namespace costs a thread, so results are cached by file identity (device and
//! inode, i.e. the namespace itself): a rescan only enters files it has not seen, plus (on a
//! miss) files that had no address yet (the runtime creates the namespace before the network
//! plugin configures it). A cached hit is re-checked from inside before it is trusted, so a
//! stale cache never hands out the wrong namespace. Files that vanish mid-scan or are not
//! namespaces are skipped with a debug log: one odd file never fails other pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strait_netns::{FileId, NetNs};

/// Where container runtimes keep pod network namespaces (containerd, CRI-O).
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// At most one rescan per this interval: a burst of misses costs one scan.
pub const MIN_RESCAN: Duration = Duration::from_millis(500);
/// A cached entry read more recently than this is trusted without entering it again.
const FRESH: Duration = Duration::from_millis(250);

/// Why the namespace directory could not be scanned at all.
#[derive(Debug, thiserror::Error)]
#[error("network namespace directory {}: {error}", dir.display())]
pub struct DiscoveryError {
    pub dir: PathBuf,
    #[source]
    pub error: std::io::Error,
}

/// The namespace found for an address.
#[derive(Clone, Debug)]
pub struct Found {
    /// An open handle (keeps the namespace alive while held).
    pub netns: NetNs,
    /// The file it was found at.
    pub path: PathBuf,
    pub id: FileId,
}

/// The outcome of looking an address up.
#[derive(Clone, Debug)]
pub enum Resolution {
    Found(Found),
    /// No namespace holds the address. `scanned`: a rescan was done for this lookup (else the
    /// rescan was rate limited and a later lookup may still find it).
    Missing {
        scanned: bool,
    },
    /// Several namespaces hold the address right now (their files are listed).
    Ambiguous(Vec<PathBuf>),
}

#[derive(Clone, Debug)]
struct Entry {
    path: PathBuf,
    /// The addresses that identify a pod (see [`identifying`]).
    addresses: Vec<IpAddr>,
    read_at: Instant,
    /// False for a file that could not be entered (not a namespace): never entered again
    /// while it keeps its identity (a namespace mounted over it would change it).
    usable: bool,
}

/// Finds pod namespaces in one directory. Blocking (enters namespaces on helper threads): call
/// from `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Discovery {
    dir: PathBuf,
    entries: BTreeMap<FileId, Entry>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    entered: u64,
}

impl Discovery {
    pub fn new(dir: impl Into<PathBuf>) -> Discovery {
        Discovery {
            dir: dir.into(),
            entries: BTreeMap::new(),
            last_scan: None,
            min_rescan: MIN_RESCAN,
            entered: 0,
        }
    }

    /// Changes the rescan rate limit (tests).
    pub fn with_min_rescan(mut self, min_rescan: Duration) -> Discovery {
        self.min_rescan = min_rescan;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times a namespace was entered so far (to observe the cache).
    pub fn entered(&self) -> u64 {
        self.entered
    }

    /// Lists the directory and enters the files not cached yet (and, with `reenter_empty`, the
    /// cached ones that had no identifying address). Forgets files that are gone. Returns how
    /// many files were entered.
    pub fn scan(&mut self, reenter_empty: bool) -> Result<usize, DiscoveryError> {
        self.last_scan = Some(Instant::now());
        let listing = list_dir(&self.dir)?;
        let (enter, drop) = plan_scan(&self.entries, &listing, reenter_empty);
        for id in drop {
            self.entries.remove(&id);
        }
        let mut entered = 0;
        for (path, id) in enter {
            entered += 1;
            let entry = self.read(&path, id).unwrap_or_else(|| Entry {
                path: path.clone(),
                addresses: Vec::new(),
                read_at: Instant::now(),
                usable: false,
            });
            self.entries.insert(id, entry);
        }
        Ok(entered)
    }

    /// Looks up several addresses at once: at most one rescan for all of them (when one misses
    /// and the rate limit allows).
    pub fn resolve_all(
        &mut self,
        ips: &[IpAddr],
    ) -> Result<HashMap<IpAddr, Resolution>, DiscoveryError> {
        let mut scanned = false;
        if self.last_scan.is_none() {
            self.scan(false)?;
            scanned = true;
        }
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for ip in ips {
            match self.lookup(*ip) {
                Resolution::Missing { .. } => missing.push(*ip),
                found => {
                    out.insert(*ip, found);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        if !scanned && rescan_due(self.last_scan, Instant::now(), self.min_rescan) {
            self.scan(true)?;
            scanned = true;
        }
        for ip in missing {
            let resolution = match self.lookup(ip) {
                Resolution::Missing { .. } => Resolution::Missing { scanned },
                other => other,
            };
            out.insert(ip, resolution);
        }
        Ok(out)
    }

    /// One address (see [`Discovery::resolve_all`]).
    pub fn resolve(&mut self, ip: IpAddr) -> Result<Resolution, DiscoveryError> {
        let mut all = self.resolve_all(&[ip])?;
        Ok(all
            .remove(&ip)
            .unwrap_or(Resolution::Missing { scanned: false }))
    }

    /// Whether `path` still names the namespace `id` (false once the runtime removed the file
    /// or reused the name for a new sandbox).
    pub fn still_names(path: &Path, id: FileId) -> bool {
        std::fs::metadata(path).is_ok_and(|m| FileId::of(&m) == id)
    }

    /// The cached namespaces that (may) hold `ip`, re-checked from inside unless just read.
    fn lookup(&mut self, ip: IpAddr) -> Resolution {
        let now = Instant::now();
        let mut holding: Vec<Found> = Vec::new();
        for id in candidates(&self.entries, ip) {
            let Some(entry) = self.entries.get(&id).cloned() else {
                continue;
            };
            let netns = match open_checked(&entry.path, id) {
                Some(netns) => netns,
                None => {
                    self.entries.remove(&id);
                    continue;
                }
            };
            if now.duration_since(entry.read_at) > FRESH {
                match self.read_addresses(&netns) {
                    Some(addresses) => {
                        let holds = addresses.contains(&ip);
                        self.entries.insert(
                            id,
                            Entry {
                                path: entry.path.clone(),
                                addresses,
                                read_at: Instant::now(),
                                usable: true,
                            },
                        );
                        if !holds {
                            continue;
                        }
                    }
                    None => {
                        self.entries.remove(&id);
                        continue;
                    }
                }
            }
            holding.push(Found {
                netns,
                path: entry.path,
                id,
            });
        }
        match holding.len() {
            0 => Resolution::Missing { scanned: false },
            1 => Resolution::Found(holding.remove(0)),
            _ => Resolution::Ambiguous(holding.into_iter().map(|f| f.path).collect()),
        }
    }

    /// Enters the file at `path` and reads its addresses; `None` (logged) when it vanished,
    /// changed identity or is not a namespace.
    fn read(&mut self, path: &Path, id: FileId) -> Option<Entry> {
        let netns = open_checked(path, id)?;
        let addresses = self.read_addresses(&netns)?;
        Some(Entry {
            path: path.to_path_buf(),
            addresses,
            read_at: Instant::now(),
            usable: true,
        })
    }

    fn read_addresses(&mut self, netns: &NetNs) -> Option<Vec<IpAddr>> {
        self.entered += 1;
        match netns.addresses() {
            Ok(addresses) => Some(addresses.into_iter().filter(identifying).collect()),
            Err(e) => {
                tracing::debug!(path = %netns.path().display(), error = %e, "skipped: not a usable network namespace");
                None
            }
        }
    }
}

/// Opens `path` and checks it is still the file `id` (it may have been replaced since listed).
fn open_checked(path: &Path, id: FileId) -> Option<NetNs> {
    let netns = match NetNs::open(path) {
        Ok(netns) => netns,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "skipped: vanished or unreadable");
            return None;
        }
    };
    match netns.file_id() {
        Ok(now) if now == id => Some(netns),
        Ok(_) => {
            tracing::debug!(path = %path.display(), "skipped: replaced while scanning");
            None
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "skipped: unreadable");
            None
        }
    }
}

/// The regular files of `dir` (symlinks followed) with their identity. Only the directory
/// itself failing is an error; odd entries are skipped.
fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, FileId)>, DiscoveryError> {
    let read = std::fs::read_dir(dir).map_err(|error| DiscoveryError {
        dir: dir.to_path_buf(),
        error,
    })?;
    let mut out = Vec::new();
    for entry in read {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        // Namespace files are (bind-mounted) regular files; anything else (a directory, a
        // FIFO that would block `open`, a dangling link) is not one.
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => out.push((path, FileId::of(&metadata))),
            Ok(_) => tracing::debug!(path = %path.display(), "skipped: not a regular file"),
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "skipped: vanished"),
        }
    }
    out.sort();
    Ok(out)
}

/// Which files a scan enters and which cached entries it forgets. A namespace listed under
/// several names is entered once.
fn plan_scan(
    cached: &BTreeMap<FileId, Entry>,
    listing: &[(PathBuf, FileId)],
    reenter_empty: bool,
) -> (Vec<(PathBuf, FileId)>, Vec<FileId>) {
    let listed: BTreeSet<FileId> = listing.iter().map(|(_, id)| *id).collect();
    let drop: Vec<FileId> = cached
        .keys()
        .filter(|id| !listed.contains(id))
        .copied()
        .collect();
    let mut seen = BTreeSet::new();
    let enter = listing
        .iter()
        .filter(|(_, id)| seen.insert(*id))
        .filter(|(_, id)| match cached.get(id) {
            None => true,
            Some(entry) => reenter_empty && entry.usable && entry.addresses.is_empty(),
        })
        .cloned()
        .collect();
    (enter, drop)
}

/// The cached namespaces whose last known addresses include `ip`.
fn candidates(entries: &BTreeMap<FileId, Entry>, ip: IpAddr) -> Vec<FileId> {
    entries
        .iter()
        .filter(|(_, entry)| entry.addresses.contains(&ip))
        .map(|(id, _)| *id)
        .collect()
}

/// Addresses that can identify a pod: not loopback, link-local or unspecified (every namespace
/// has those, or the same ones).
fn identifying(ip: &IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// Whether a rescan is allowed now.
fn rescan_due(last: Option<Instant>, now: Instant, min: Duration) -> bool {
    last.is_none_or(|last| now.saturating_duration_since(last) >= min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 4, ino }
    }

    fn entry(path: &str, addresses: &[&str]) -> Entry {
        Entry {
            path: PathBuf::from(path),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            read_at: Instant::now(),
            usable: true,
        }
    }

    #[test]
    fn a_rescan_enters_only_new_files_and_forgets_vanished_ones() {
        let mut cached = BTreeMap::new();
        cached.insert(id(1), entry("/run/netns/cni-a", &["198.18.0.2"]));
        cached.insert(id(2), entry("/run/netns/cni-b", &["198.18.0.3"]));
        cached.insert(id(3), entry("/run/netns/cni-c", &[]));
        // A file that is not a namespace.
        cached.insert(
            id(5),
            Entry {
                usable: false,
                ..entry("/run/netns/junk", &[])
            },
        );
        let listing = vec![
            (PathBuf::from("/run/netns/cni-a"), id(1)),
            (PathBuf::from("/run/netns/cni-c"), id(3)),
            (PathBuf::from("/run/netns/junk"), id(5)),
            (PathBuf::from("/run/netns/cni-d"), id(4)),
            // The same namespace under a second name is entered once.
            (PathBuf::from("/run/netns/cni-d-again"), id(4)),
        ];
        let (enter, drop) = plan_scan(&cached, &listing, false);
        assert_eq!(enter, vec![(PathBuf::from("/run/netns/cni-d"), id(4))]);
        assert_eq!(drop, vec![id(2)]);
        // On a miss, namespaces that had no address yet are entered again too (never files
        // that are not namespaces).
        let (enter, _) = plan_scan(&cached, &listing, true);
        let entered: Vec<FileId> = enter.iter().map(|(_, id)| *id).collect();
        assert_eq!(entered, vec![id(3), id(4)]);
    }

    #[test]
    fn candidates_are_the_namespaces_holding_the_address() {
        let mut cached = BTreeMap::new();
        cached.insert(id(1), entry("/a", &["198.18.0.2", "fd00::2"]));
        cached.insert(id(2), entry("/b", &["198.18.0.3"]));
        cached.insert(id(3), entry("/c", &["198.18.0.2"]));
        assert_eq!(
            candidates(&cached, "198.18.0.2".parse().unwrap()),
            vec![id(1), id(3)]
        );
        assert_eq!(candidates(&cached, "fd00::2".parse().unwrap()), vec![id(1)]);
        assert!(candidates(&cached, "198.18.0.9".parse().unwrap()).is_empty());
    }

    #[test]
    fn only_pod_addresses_identify_a_namespace() {
        for shared in ["127.0.0.1", "::1", "169.254.1.1", "fe80::1", "0.0.0.0"] {
            assert!(!identifying(&shared.parse().unwrap()), "{shared}");
        }
        for pod in ["198.18.0.2", "10.244.1.7", "fd00:10:244::7"] {
            assert!(identifying(&pod.parse().unwrap()), "{pod}");
        }
    }

    #[test]
    fn rescans_are_rate_limited() {
        let now = Instant::now();
        let min = Duration::from_millis(500);
        assert!(rescan_due(None, now, min));
        assert!(!rescan_due(
            Some(now),
            now + Duration::from_millis(100),
            min
        ));
        assert!(rescan_due(Some(now), now + Duration::from_millis(500), min));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let mut discovery = Discovery::new("/nonexistent/strait-netns-dir");
        let err = discovery.scan(false).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/strait-netns-dir"), "{err}");
    }
}
