//! The harness's network: one TCP proxy per directed peer link (member `from` dialling
//! member `to`), so a link can be cut in one direction. Members are started with
//! `--peer-dial <to>=127.0.0.1:<proxy port>` for every other member.
//!
//! metcd's transport sends a member's raft messages only on the streams it opens itself, so
//! cutting the link from -> to drops exactly the messages from `from` to `to`. A cut closes the
//! link's open connections and refuses new ones until the link is healed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

struct Link {
    cut: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Link {
    fn close_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

pub struct Net {
    links: HashMap<(usize, usize), Arc<Link>>,
    stop: Arc<AtomicBool>,
}

impl Net {
    /// Proxies for every ordered pair of distinct ids in `ids`; the link from -> to listens on
    /// `port_of(from, to)` and forwards to `peer_port(to)`.
    pub fn start(
        ids: &[usize],
        port_of: impl Fn(usize, usize) -> u16,
        peer_port: impl Fn(usize) -> u16,
    ) -> Net {
        let stop = Arc::new(AtomicBool::new(false));
        let mut links = HashMap::new();
        for &from in ids {
            for &to in ids.iter().filter(|&&to| to != from) {
                let link = Arc::new(Link {
                    cut: AtomicBool::new(false),
                    conns: Mutex::new(Vec::new()),
                });
                let listener = TcpListener::bind(("127.0.0.1", port_of(from, to)))
                    .unwrap_or_else(|e| panic!("proxy {from}->{to}: bind: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                let target = peer_port(to);
                let (l, s) = (link.clone(), stop.clone());
                thread::spawn(move || accept_loop(listener, target, l, s));
                links.insert((from, to), link);
            }
        }
        Net { links, stop }
    }

    pub fn cut(&self, from: usize, to: usize) {
        if let Some(l) = self.links.get(&(from, to)) {
            l.cut.store(true, Ordering::SeqCst);
            l.close_all();
        }
    }

    /// Cuts every link to and from `member`.
    pub fn isolate(&self, member: usize) {
        let pairs: Vec<(usize, usize)> = self.links.keys().copied().collect();
        for (from, to) in pairs {
            if from == member || to == member {
                self.cut(from, to);
            }
        }
    }

    pub fn heal(&self) {
        for l in self.links.values() {
            l.cut.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for l in self.links.values() {
            l.close_all();
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, link: Arc<Link>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if link.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pair = (client.try_clone(), server.try_clone());
                let (Ok(client2), Ok(server2)) = pair else {
                    continue;
                };
                {
                    let mut conns = link.conns.lock().unwrap();
                    conns.retain(|c| c.peer_addr().is_ok());
                    conns.push(client.try_clone().expect("clone"));
                    conns.push(server.try_clone().expect("clone"));
                }
                thread::spawn(move || pump(client, server2));
                thread::spawn(move || pump(server, client2));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
