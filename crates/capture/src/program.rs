//! Running the host's network programs (iptables, iproute2) inside a pod's network namespace.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use strait_netns::NetNs;

use crate::CaptureError;

/// Directories searched after `PATH`: these programs live in `sbin`, which service environments
/// often leave out of `PATH`.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// A program of the host, and the Debian package that ships it (named when it is missing).
#[derive(Clone, Debug)]
pub(crate) struct Program {
    path: PathBuf,
    package: &'static str,
}

impl Program {
    /// Finds `name` in `PATH`, then in the usual `sbin` directories.
    pub(crate) fn locate(name: &str, package: &'static str) -> Result<Program, CaptureError> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
        Ok(Program {
            path: find(name, package, &dirs)?,
            package,
        })
    }

    /// The program at `path` (a bare name is looked up in `PATH` when run).
    pub(crate) fn at(path: impl Into<PathBuf>, package: &'static str) -> Program {
        Program {
            path: path.into(),
            package,
        }
    }

    /// Runs the program in `netns` with `input` on its standard input; a non-zero exit is an
    /// error carrying its standard error. The child is forked from a thread that entered the
    /// namespace, so it starts there and this process never changes namespace.
    pub(crate) fn run(
        &self,
        netns: &NetNs,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<Output, CaptureError> {
        let binary: &Path = &self.path;
        let spawn_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CaptureError::MissingBinary {
                    binary: binary.display().to_string(),
                    searched: "not executable or does not exist".to_string(),
                    package: self.package,
                }
            } else {
                CaptureError::Spawn {
                    binary: binary.to_path_buf(),
                    netns: netns.path().to_path_buf(),
                    source,
                }
            }
        };
        let output = netns.run(|| -> Result<Output, std::io::Error> {
            let mut child = Command::new(binary)
                .args(args)
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let stdin = child.stdin.take();
            // Feed the input from a second thread so a child that writes a lot before reading
            // everything cannot deadlock against us.
            let written = std::thread::scope(|scope| {
                let writer = scope.spawn(move || -> std::io::Result<()> {
                    if let (Some(mut stdin), Some(input)) = (stdin, input) {
                        stdin.write_all(input.as_bytes())?;
                    }
                    Ok(())
                });
                let output = child.wait_with_output();
                let written = writer
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
                output.map(|output| (output, written))
            })?;
            let (output, written) = written;
            // A failed write (EPIPE) only matters if the program also reported success.
            if output.status.success() {
                written?;
            }
            Ok(output)
        })?;
        let output = output.map_err(spawn_error)?;
        if !output.status.success() {
            return Err(CaptureError::Failed {
                binary: binary.to_path_buf(),
                netns: netns.path().to_path_buf(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(output)
    }
}

/// The first executable file called `name` in `dirs`.
fn find(name: &str, package: &'static str, dirs: &[PathBuf]) -> Result<PathBuf, CaptureError> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| CaptureError::MissingBinary {
            binary: name.to_string(),
            searched: format!(
                "searched {}",
                std::env::join_paths(dirs)
                    .map(|joined| joined.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("{dirs:?}"))
            ),
            package,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_are_reported_by_name_search_path_and_package() {
        let empty =
            std::env::temp_dir().join(format!("strait-capture-empty-{}", std::process::id()));
        let err = find("iptables-restore", "iptables", std::slice::from_ref(&empty)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CaptureError::MissingBinary { .. }));
        assert!(message.contains("iptables-restore not found"), "{message}");
        assert!(message.contains(&empty.display().to_string()), "{message}");
        assert!(
            message.contains("install the iptables package"),
            "{message}"
        );
        let err = find("ip", "iproute2", std::slice::from_ref(&empty)).unwrap_err();
        assert!(
            err.to_string().contains("install the iproute2 package"),
            "{err}"
        );
    }
}
