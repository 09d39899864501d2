//! A tiny HTTP/1.1 server on loopback serving a test torrent's files as a web seed would
//! (`/NAME/PATH`, byte ranges, keep-alive), misbehaving as its [`Script`] says: the cases a
//! real server (nginx in `tests/webseed.rs`) will not produce on demand. Dropping it aborts
//! its listener and every connection.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::fake_peer::Content;

/// How the server answers; the test may change it while the server runs.
#[derive(Clone, Debug, Default)]
pub(super) struct Script {
    /// 503 with `Retry-After: 1` for everything.
    pub busy: bool,
    /// 404 for these files (by index).
    pub missing: Vec<usize>,
    /// Cut the next answer's body in half (headers announce it whole), then close.
    pub cut_next: bool,
    /// Send one byte more than asked (and say so in `Content-Length`).
    pub too_long: bool,
    /// Answer 200 with the whole file, whatever the `Range`.
    pub ignore_range: bool,
    /// 302 to the same path on this server (`None`: serve); its own address makes a loop.
    pub redirect_to: Option<SocketAddr>,
    /// Torrent offsets served with every byte flipped.
    pub corrupt: Option<Range<u64>>,
    /// Send a ranged answer's headers, then nothing, keeping the connection open.
    pub stall: bool,
}

/// What the server saw.
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    pub connections: usize,
    /// Each request's path, `Range` header and the status answered.
    pub requests: Vec<(String, Option<String>, u16)>,
    /// Body bytes of the file data sent.
    pub bytes: u64,
    /// Requests read and not yet answered in full, now and at most.
    pub in_flight: usize,
    pub most_in_flight: usize,
}

impl Seen {
    pub fn count(&self, status: u16) -> usize {
        self.requests.iter().filter(|r| r.2 == status).count()
    }
}

pub(super) struct WebServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<(Script, Seen)>>,
    task: JoinHandle<()>,
}

impl WebServer {
    pub async fn start(content: Arc<Content>, script: Script) -> WebServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind web server");
        let addr = listener.local_addr().expect("web server address");
        let shared = Arc::new(Mutex::new((script, Seen::default())));
        let state = shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                state.lock().unwrap().1.connections += 1;
                conns.spawn(serve(stream, content.clone(), state.clone()));
            }
        });
        WebServer { addr, shared, task }
    }

    /// The URL to put in the torrent's `url-list`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn seen(&self) -> Seen {
        self.shared.lock().unwrap().1.clone()
    }

    pub fn set(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.shared.lock().unwrap().0);
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: requests until either side closes.
async fn serve(stream: TcpStream, content: Arc<Content>, state: Arc<Mutex<(Script, Seen)>>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut request_line = String::new();
        if rd.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut range = None;
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("range")
            {
                range = Some(v.trim().to_string());
            }
        }
        let script = state.lock().unwrap().0.clone();
        let answer = answer(&content, &script, &path, range.as_deref());
        {
            let mut st = state.lock().unwrap();
            st.1.requests.push((path, range, answer.status));
            st.1.bytes += answer.body.len() as u64;
            st.1.in_flight += 1;
            st.1.most_in_flight = st.1.most_in_flight.max(st.1.in_flight);
            if script.cut_next && answer.status == 206 {
                st.0.cut_next = false;
            }
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for h in &answer.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        if wr.write_all(head.as_bytes()).await.is_err() {
            state.lock().unwrap().1.in_flight -= 1;
            return;
        }
        if script.stall && answer.status == 206 {
            std::future::pending::<()>().await;
        }
        let cut = script.cut_next && answer.status == 206;
        let body = if cut {
            &answer.body[..answer.body.len() / 2]
        } else {
            &answer.body[..]
        };
        let sent = wr.write_all(body).await;
        state.lock().unwrap().1.in_flight -= 1;
        if sent.is_err() || cut {
            return;
        }
    }
}

struct Answer {
    status: u16,
    headers: Vec<String>,
    body: Vec<u8>,
}

fn answer(content: &Content, script: &Script, path: &str, range: Option<&str>) -> Answer {
    let plain = |status| Answer {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    };
    if let Some(to) = script.redirect_to {
        return Answer {
            status: 302,
            headers: vec![format!("Location: http://{to}{path}")],
            body: Vec::new(),
        };
    }
    if script.busy {
        return Answer {
            status: 503,
            headers: vec!["Retry-After: 1".to_string()],
            body: Vec::new(),
        };
    }
    let info = &content.torrent.info;
    let Some(file) = (info.files.iter()).position(|f| format!("/{}", f.path.join("/")) == path)
    else {
        return plain(404);
    };
    if script.missing.contains(&file) {
        return plain(404);
    }
    let f = &info.files[file];
    let (first, last) = match range.filter(|_| !script.ignore_range) {
        None => (0, f.length.saturating_sub(1)),
        Some(r) => {
            let parsed = r.strip_prefix("bytes=").and_then(|r| r.split_once('-'));
            match parsed.and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))) {
                Some((a, b)) if a <= b && b < f.length => (a, b),
                _ => return plain(416),
            }
        }
    };
    let start = f.offset + first;
    let mut end = f.offset + last + 1;
    if script.too_long {
        end += 1;
    }
    let mut body =
        content.data[start as usize..end.min(content.data.len() as u64) as usize].to_vec();
    if script.too_long && body.len() as u64 == end - start - 1 {
        body.push(0);
    }
    if let Some(bad) = &script.corrupt {
        for (i, b) in body.iter_mut().enumerate() {
            if bad.contains(&(start + i as u64)) {
                *b ^= 0xff;
            }
        }
    }
    if range.is_none() || script.ignore_range {
        return Answer {
            status: 200,
            headers: Vec::new(),
            body,
        };
    }
    Answer {
        status: 206,
        headers: vec![format!("Content-Range: bytes {first}-{last}/{}", f.length)],
        body,
    }
}
