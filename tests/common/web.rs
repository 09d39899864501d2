//! Web seeds (BEP 19) for the tests: Debian's nginx serving a folder on a free loopback port
//! with its own config in a temp dir, ended by PID on drop; and a torrent whose only source is
//! a `url-list`.

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{POLL, Proc, free_port, run, swarm_cmd, terminate_all};

const NGINX: &str = "/usr/sbin/nginx";
/// nginx listens within moments; generous for a loaded CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Tries at a port another test may have taken between `free_port` and nginx's bind.
const PORT_TRIES: usize = 3;

/// nginx serving `root` at `http://127.0.0.1:PORT/` (byte ranges, keep-alive, sendfile).
pub struct Nginx {
    proc: Option<Proc>,
    port: u16,
    root: PathBuf,
    // Last, so it is removed after the process is gone.
    dir: TempDir,
}

impl Nginx {
    /// On a free port.
    pub fn start(root: &Path) -> Nginx {
        for attempt in 1..=PORT_TRIES {
            let port = free_port(Ipv4Addr::LOCALHOST);
            match Nginx::try_start(root, port) {
                Ok(n) => return n,
                Err(log) => assert!(attempt < PORT_TRIES, "nginx never listened:\n{log}"),
            }
        }
        unreachable!()
    }

    /// A server that will listen on `port` once `start_at` is called: its URL can go in a
    /// torrent before it runs (connections are refused until then).
    pub fn reserve_port() -> u16 {
        free_port(Ipv4Addr::LOCALHOST)
    }

    /// On `port` (from `reserve_port`); panics if it cannot listen there.
    pub fn start_at(root: &Path, port: u16) -> Nginx {
        Nginx::try_start(root, port).unwrap_or_else(|log| panic!("nginx never listened:\n{log}"))
    }

    fn try_start(root: &Path, port: u16) -> Result<Nginx, String> {
        let dir = tempfile::Builder::new()
            .prefix("btfs-nginx-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let conf = dir.path().join("nginx.conf");
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize {root:?}: {e}"));
        // Everything nginx writes goes under `dir`: pid, logs, temp folders. `user root`
        // lets its worker read the test's 0700 temp dirs (ignored, with a notice, when not
        // run as root).
        let temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .map(|t| format!("  {t}_temp_path {t};\n"))
            .concat();
        let text = format!(
            "daemon off;\nworker_processes 1;\npid nginx.pid;\nuser root;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log access.log;\n{temp}  sendfile on;\n  keepalive_requests 10000;\n\
             \x20 default_type application/octet-stream;\n\
             \x20 server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            root = nginx_quote(&root),
        );
        fs::write(&conf, text).unwrap_or_else(|e| panic!("write {conf:?}: {e}"));
        let log = dir.path().join("error.log");
        let mut cmd = Command::new(NGINX);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&log);
        let mut p = Proc::spawn("nginx", &mut cmd, dir.path().join("stderr.log"));
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx {
                    proc: Some(p),
                    port,
                    root,
                    dir,
                });
            }
            if p.exited().is_some() || Instant::now() >= deadline {
                let text = format!(
                    "{}\n{}",
                    p.log_text(),
                    fs::read_to_string(&log).unwrap_or_default()
                );
                terminate_all(&mut [&mut p.child]);
                return Err(text);
            }
            sleep(POLL);
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder it serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What it logged: each request with its status and byte count.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            // SIGTERM: the master ends its worker and exits.
            terminate_all(&mut [&mut p.child]);
        }
    }
}

/// A path as one nginx config token.
fn nginx_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `http://127.0.0.1:PORT/`: the url-list entry for files served from a server's root.
pub fn web_seed_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}

/// Data made by `swarm.py make-data` and (`make_torrent`) a torrent of it whose only sources
/// are web seeds (no tracker, no peer); removed on drop.
pub struct WebSeeded {
    torrent: PathBuf,
    data_path: PathBuf,
    dir: TempDir,
}

impl WebSeeded {
    /// `layout` and `size` as `swarm.py make-data` takes them (`multi`: a folder of awkward
    /// sizes, `size` bytes in its last file).
    pub fn make(layout: &str, size: u64) -> WebSeeded {
        let dir = tempfile::Builder::new()
            .prefix("btfs-webseed-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let parent = dir.path().join("data");
        let made = run(swarm_cmd()
            .arg("make-data")
            .arg(&parent)
            .args(["--layout", layout, "--seed", "7"])
            .args(["--size", &size.to_string()]));
        WebSeeded {
            torrent: dir.path().join("web.torrent"),
            data_path: PathBuf::from(made.trim()),
            dir,
        }
    }

    /// The torrent (libtorrent makes it), its `url-list` being `web_seeds`.
    pub fn make_torrent(&self, piece_length: u32, web_seeds: &[String]) {
        let mut mk = swarm_cmd();
        mk.arg("make-torrent")
            .arg(&self.data_path)
            .arg(&self.torrent)
            .args(["--piece-length", &piece_length.to_string()]);
        for url in web_seeds {
            mk.args(["--web-seed", url]);
        }
        run(&mut mk);
    }

    pub fn torrent(&self) -> &Path {
        &self.torrent
    }

    /// The folder holding the torrent's file or folder: what a web seed serves at its root.
    pub fn data_parent(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Every file as (path relative to `data_parent`, length), sorted.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        super::files_under(&self.data_path, &self.data_parent())
    }

    /// A copy of the data in a new folder (under this fixture's temp dir), for a second
    /// server to serve, perhaps changed.
    pub fn copy_data(&self, name: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        for (rel, _) in self.files() {
            let dst = to.join(&rel);
            fs::create_dir_all(dst.parent().expect("a file has a parent"))
                .unwrap_or_else(|e| panic!("mkdir for {dst:?}: {e}"));
            fs::copy(self.data_parent().join(&rel), &dst)
                .unwrap_or_else(|e| panic!("copy to {dst:?}: {e}"));
        }
        to
    }
}
