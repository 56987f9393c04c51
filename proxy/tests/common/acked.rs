//! The crash tests' load: clients sending requests back to back on kept-alive connections,
//! each recording the ids of the requests it saw answered (and when), until stopped or until
//! the gateway is gone — so a test can kill the gateway and check that everything acknowledged
//! long enough before the kill is in the ledger.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::http1::{parse_response_head, BodyFraming};

use super::{chat, post_bytes};

/// One request on a kept-alive connection: the status once the whole answer is read, `None`
/// when the connection failed (the gateway is gone).
pub fn try_post(s: &mut TcpStream, bytes: &[u8]) -> Option<u16> {
    s.write_all(bytes).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Ok(Some((head, len))) = parse_response_head(&buf, 1 << 20, false) {
            let want = match head.body {
                BodyFraming::Length(n) => n as usize,
                BodyFraming::Empty => 0,
                _ => return None,
            };
            while buf.len() < len + want {
                let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(head.status);
        }
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Clients under load, each request carrying its own `x-request-id` (`<tag>-<client>-<n>`).
pub struct Acked {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<(String, Instant)>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Acked {
    /// `clients` connections to `addr` sending `mock-fast` chats as `key`.
    pub fn start(addr: SocketAddr, key: &str, clients: usize, tag: &str) -> Acked {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|t| {
                let (stop, done) = (stop.clone(), done.clone());
                let (key, tag) = (key.to_string(), tag.to_string());
                std::thread::spawn(move || {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        return;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{tag}-{t}-{i}");
                        i += 1;
                        let extra =
                            format!("authorization: Bearer {key}\r\nx-request-id: {id}\r\n");
                        let bytes =
                            post_bytes("/v1/chat/completions", &chat("mock-fast", false), &extra);
                        match try_post(&mut s, bytes.as_bytes()) {
                            Some(200) => done.lock().unwrap().push((id, Instant::now())),
                            Some(_) => {}
                            None => return,
                        }
                    }
                })
            })
            .collect();
        Acked {
            stop,
            done,
            clients,
        }
    }

    /// Stops the clients (call it right after the kill, at `killed`); the ids answered more
    /// than `margin` before it.
    pub fn stop(self, killed: Instant, margin: Duration) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        let done = self.done.lock().unwrap();
        done.iter()
            .filter(|(_, at)| *at + margin < killed)
            .map(|(id, _)| id.clone())
            .collect()
    }
}
