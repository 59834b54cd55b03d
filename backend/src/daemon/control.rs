//! The daemon's control socket. `vhost-user-rdma stats SOCKET` connects,
//! sends one request line and reads one JSON object back. The socket is
//! made mode 0600 right after it is bound. Requests are served on their
//! own thread, which asks the port's thread for a snapshot through a
//! channel and an eventfd; the port's thread builds it between packets,
//! so the packet path itself gains nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

/// The one request the socket understands.
pub const STATS: &str = "stats";

/// A snapshot asked of the port's thread; the JSON goes back on `reply`.
pub struct Ask {
    /// Where the snapshot goes.
    pub reply: SyncSender<String>,
}

/// The port thread's end of the control socket.
pub struct ControlEnd {
    /// Snapshots asked for.
    pub asks: Receiver<Ask>,
    /// Readable while asks wait.
    pub wake: Arc<EventFd>,
}

impl ControlEnd {
    /// Answers every waiting ask with `snapshot()`.
    pub fn answer(&self, mut snapshot: impl FnMut() -> String) {
        let _ = self.wake.read();
        while let Ok(a) = self.asks.try_recv() {
            let _ = a.reply.try_send(snapshot());
        }
    }
}

/// Binds the control socket at `path` (mode 0600) and serves it on a
/// thread of its own; snapshots come from the thread that polls the
/// returned end.
pub fn serve(path: &Path) -> std::io::Result<ControlEnd> {
    let (tx, rx) = sync_channel::<Ask>(4);
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let w = wake.clone();
    serve_with(path, move || {
        let (rtx, rrx) = sync_channel(1);
        if tx.try_send(Ask { reply: rtx }).is_err() {
            return serde_json::json!({"error": "busy"}).to_string();
        }
        if w.write(1).is_err() {
            return serde_json::json!({"error": "cannot wake the port's thread"}).to_string();
        }
        rrx.recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| {
                serde_json::json!({"error": "the port's thread did not answer within 2 s"})
                    .to_string()
            })
    })?;
    Ok(ControlEnd { asks: rx, wake })
}

/// Binds the control socket at `path` (mode 0600) and serves it on a
/// thread of its own, answering `stats` with `snapshot()` (run on that
/// thread).
pub fn serve_with(
    path: &Path,
    snapshot: impl Fn() -> String + Send + 'static,
) -> std::io::Result<()> {
    // Made 0600 from the start (umask), and set again in case the umask
    // did not apply.
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(
        "control socket {} (vhost-user-rdma stats {})",
        path.display(),
        path.display()
    );
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = handle(c, &snapshot) {
                            warn!("control socket: {e}");
                        }
                    }
                    Err(e) => warn!("control socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn handle(c: UnixStream, snapshot: &dyn Fn() -> String) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new((&c).take(256)).read_line(&mut line)?;
    let req = line.trim();
    let mut out = &c;
    if req != STATS {
        let shown: String = req.chars().filter(|c| !c.is_control()).take(64).collect();
        let msg = serde_json::json!({
            "error": format!("unknown request {shown:?}: this socket understands only \"{STATS}\"")
        });
        return writeln!(out, "{msg}");
    }
    writeln!(out, "{}", snapshot())
}

/// Sends `request` to the control socket at `path` and returns the reply
/// line.
pub fn ask(path: &Path, request: &str) -> std::io::Result<String> {
    let mut c = UnixStream::connect(path)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(c, "{request}")?;
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line)?;
    Ok(line)
}
