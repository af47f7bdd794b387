//! A loopback HTTP/1.1 proxy in front of the real S3 server: it forwards
//! request by request (so every request's headers are seen), and on command
//! answers 500, or takes a request and never answers (a hung store).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every request answered `500 InternalError`.
    Fail500,
    /// Requests read and never answered.
    Hang,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Every request's method, path and headers, lower-cased names.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy on loopback");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, s) = (m.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &m, &s);
                });
            }
        });
        Proxy { port, mode, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads a head (request or response line and headers) ending in an empty line.
fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body_of(r: &mut BufReader<TcpStream>, head: &[String]) -> std::io::Result<Vec<u8>> {
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            out.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            out.extend_from_slice(&chunk);
            if n == 0 {
                return Ok(out);
            }
        }
    }
    let n: usize = header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; n];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn write_head(w: &mut TcpStream, head: &[String]) -> std::io::Result<()> {
    let mut text = head.join("\r\n");
    text.push_str("\r\n\r\n");
    w.write_all(text.as_bytes())
}

fn serve(
    client: TcpStream,
    upstream: u16,
    mode: &Mutex<Mode>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut to_client = client.try_clone()?;
    let mut from_client = BufReader::new(client);
    let mut up: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        let Some(head) = read_head(&mut from_client)? else {
            return Ok(());
        };
        let body = body_of(&mut from_client, &head)?;
        seen.lock().unwrap().push(head.join("\n").to_lowercase());
        let current = *mode.lock().unwrap();
        match current {
            Mode::Hang => {
                // Hold the connection until the client gives up.
                std::thread::sleep(Duration::from_secs(120));
                return Ok(());
            }
            Mode::Fail500 => {
                let xml =
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                           <Message>injected by the test proxy</Message></Error>";
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                to_client.write_all(resp.as_bytes())?;
                continue;
            }
            Mode::Pass => {}
        }
        if up.is_none() {
            let s = TcpStream::connect(("127.0.0.1", upstream))?;
            let r = BufReader::new(s.try_clone()?);
            up = Some((s, r));
        }
        let Some((w, r)) = up.as_mut() else {
            return Ok(());
        };
        write_head(w, &head)?;
        w.write_all(&body)?;
        let Some(resp) = read_head(r)? else {
            return Ok(());
        };
        let is_head = head[0].starts_with("HEAD ");
        let status: u16 = resp[0]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let delimited = header(&resp, "content-length").is_some()
            || header(&resp, "transfer-encoding").is_some();
        let resp_body = if is_head || status == 204 || status == 304 {
            Vec::new()
        } else if delimited {
            body_of(r, &resp)?
        } else {
            // Delimited by the end of the connection.
            let mut all = Vec::new();
            r.read_to_end(&mut all)?;
            write_head(&mut to_client, &resp)?;
            to_client.write_all(&all)?;
            return Ok(());
        };
        write_head(&mut to_client, &resp)?;
        to_client.write_all(&resp_body)?;
        if header(&resp, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            up = None;
        }
    }
}
