//! Sockets inside other network namespaces, without moving the process.
//!
//! A socket belongs for life to the network namespace of the thread that created it. So a
//! process that stays in its own namespace can listen and dial inside a pod's namespace by
//! creating the socket on a short-lived thread that entered that namespace (`setns`), then driving
//! the socket from its ordinary async runtime. That is how the node proxy serves many pods from
//! one process (ztunnel's "in-pod" mode), and how tests place servers and clients in the
//! namespaces they build.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub mod keepalive;

/// Where `ip netns add NAME` puts its namespaces.
pub const NAMED_NETNS_DIR: &str = "/run/netns";

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened (no such namespace, or no permission).
    #[error("network namespace {}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `setns` failed (needs CAP_SYS_ADMIN).
    #[error("entering network namespace {}: {error}", path.display())]
    Enter { path: PathBuf, error: nix::Error },
    /// A socket operation inside the namespace failed.
    #[error("network namespace {}: {what}: {error}", path.display())]
    Socket {
        path: PathBuf,
        what: String,
        error: std::io::Error,
    },
    /// The helper thread could not be spawned or panicked.
    #[error("network namespace {}: worker thread failed", path.display())]
    Thread { path: PathBuf },
}

/// An open handle on a network namespace. Holding the file keeps the namespace alive even if its
/// name is removed; cloning shares the handle.
#[derive(Clone, Debug)]
pub struct NetNs {
    file: Arc<File>,
    path: PathBuf,
}

impl NetNs {
    /// The namespace `ip netns add NAME` created.
    pub fn named(name: &str) -> Result<NetNs, NetNsError> {
        NetNs::open(Path::new(NAMED_NETNS_DIR).join(name))
    }

    /// A namespace by file path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: impl Into<PathBuf>) -> Result<NetNs, NetNsError> {
        let path = path.into();
        let file = File::open(&path).map_err(|error| NetNsError::Open {
            path: path.clone(),
            error,
        })?;
        Ok(NetNs {
            file: Arc::new(file),
            path,
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, NetNsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// The path the namespace was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread that entered this namespace, and returns its result. The
    /// calling thread never changes namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetNsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| {
                        NetNsError::Enter {
                            path: self.path.clone(),
                            error,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|_| NetNsError::Thread {
                    path: self.path.clone(),
                })?;
            worker.join().map_err(|_| NetNsError::Thread {
                path: self.path.clone(),
            })?
        })
    }

    /// A non-blocking TCP socket created in this namespace, not yet bound or connected.
    /// `mark` sets `SO_MARK` (capture rules skip the proxy's own traffic by mark).
    pub fn tcp_socket(&self, ipv6: bool, mark: Option<u32>) -> Result<Socket, NetNsError> {
        let path = self.path.clone();
        self.run(move || -> Result<Socket, NetNsError> {
            let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
            let socket = Socket::new(
                domain,
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )
            .map_err(|source| socket_error(&path, "socket", source))?;
            if let Some(mark) = mark {
                socket
                    .set_mark(mark)
                    .map_err(|source| socket_error(&path, "SO_MARK", source))?;
            }
            Ok(socket)
        })?
    }

    /// A listening TCP socket bound to `addr` inside this namespace (SO_REUSEADDR, so a
    /// restarted proxy rebinds while old connections linger), whose connections have
    /// [`keepalive`] on. Must be called inside a Tokio runtime.
    pub fn tcp_listener(
        &self,
        addr: SocketAddr,
        backlog: i32,
    ) -> Result<tokio::net::TcpListener, NetNsError> {
        let path = self.path.clone();
        let socket = self.run(move || -> Result<Socket, NetNsError> {
            let socket = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )
            .map_err(|source| socket_error(&path, "socket", source))?;
            socket
                .set_reuse_address(true)
                .map_err(|source| socket_error(&path, "SO_REUSEADDR", source))?;
            socket
                .bind(&SockAddr::from(addr))
                .map_err(|source| socket_error(&path, &format!("bind {addr}"), source))?;
            // Inherited by every accepted connection.
            keepalive::enable(&socket)
                .map_err(|source| socket_error(&path, "TCP keep-alive", source))?;
            socket
                .listen(backlog)
                .map_err(|source| socket_error(&path, &format!("listen {addr}"), source))?;
            Ok(socket)
        })??;
        tokio::net::TcpListener::from_std(socket.into())
            .map_err(|source| socket_error(&self.path, "register listener", source))
    }

    /// Connects to `addr` from inside this namespace, with `SO_MARK` = `mark` when given, and
    /// [`keepalive`] on.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self
            .tcp_socket(addr.is_ipv6(), mark)
            .map_err(std::io::Error::other)?;
        keepalive::enable(&socket)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Whether both handles name the same namespace (same inode).
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (self.file_id(), other.file_id()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// The identity of the namespace behind this handle (device and inode of the open file,
    /// which for a namespace file is the namespace's own inode). Two paths naming the same
    /// namespace (a bind mount, a symlink, `/proc/PID/ns/net`) have the same identity, and a
    /// recreated namespace never reuses a live one's.
    pub fn file_id(&self) -> Result<FileId, NetNsError> {
        self.file
            .metadata()
            .map(|m| FileId::of(&m))
            .map_err(|error| NetNsError::Open {
                path: self.path.clone(),
                error,
            })
    }

    /// Every address assigned to an interface of this namespace (any state, loopback
    /// included), as `getifaddrs` lists them from inside.
    pub fn addresses(&self) -> Result<Vec<IpAddr>, NetNsError> {
        let path = self.path.clone();
        self.run(move || -> Result<Vec<IpAddr>, NetNsError> {
            let list = nix::ifaddrs::getifaddrs()
                .map_err(|error| socket_error(&path, "getifaddrs", std::io::Error::from(error)))?;
            let mut out: Vec<IpAddr> = Vec::new();
            for entry in list {
                let Some(address) = entry.address else {
                    continue;
                };
                let ip = if let Some(v4) = address.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = address.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(out)
        })?
    }
}

/// A file's identity: device and inode. For a namespace file, the namespace's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity in `metadata` (of the file itself, symlinks followed).
    pub fn of(metadata: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

fn socket_error(path: &Path, what: &str, error: std::io::Error) -> NetNsError {
    NetNsError::Socket {
        path: path.to_path_buf(),
        what: what.to_string(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_itself_and_run_returns_values() {
        let here = NetNs::current().unwrap();
        assert!(here.same_as(&NetNs::current().unwrap()));
        let seen = here
            .run(|| NetNs::current().unwrap())
            .expect("entering our own namespace");
        assert!(seen.same_as(&here));
    }

    #[test]
    fn missing_namespace_names_its_path() {
        let err = NetNs::named("strait-no-such-namespace").unwrap_err();
        assert!(
            err.to_string()
                .contains("/run/netns/strait-no-such-namespace"),
            "{err}"
        );
    }

    #[test]
    fn addresses_of_the_current_namespace_include_loopback() {
        let here = NetNs::current().unwrap();
        let addresses = here.addresses().expect("getifaddrs in our own namespace");
        assert!(addresses.iter().any(IpAddr::is_loopback), "{addresses:?}");
        assert_eq!(
            here.file_id().unwrap(),
            NetNs::current().unwrap().file_id().unwrap()
        );
    }

    #[tokio::test]
    async fn listener_and_connect_in_current_namespace() {
        let ns = NetNs::current().unwrap();
        let listener = ns.tcp_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(ns.connect(addr, Some(0x539)), listener.accept());
        let client = client.unwrap();
        let (server, peer) = server.unwrap();
        assert_eq!(client.local_addr().unwrap(), peer);
        for socket in [
            socket2::SockRef::from(&client),
            socket2::SockRef::from(&server),
        ] {
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive::IDLE);
        }
    }
}
