//! A TCP proxy between the service and Redis that tests make misbehave.

use tokio::{net::TcpListener, task::JoinHandle};

use crate::PATIENCE;

/// A TCP proxy between the service and a real Redis that a test can make
/// misbehave: hold the requests (they never reach Redis), hold the replies (the
/// commands run but no answer comes back), or cut every connection. It reports
/// when held bytes arrive, so tests synchronise on that event instead of sleeping.
pub struct FaultyLink {
    /// `redis://127.0.0.1:<port>` of the proxy.
    pub url: String,
    control: std::sync::Arc<LinkControl>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct LinkControl {
    hold_requests: tokio::sync::watch::Sender<bool>,
    hold_replies: tokio::sync::watch::Sender<bool>,
    /// Signalled when bytes arrive while held.
    held: tokio::sync::Notify,
    /// The task of every open connection.
    connections: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl FaultyLink {
    /// Starts a proxy in front of the Redis on `upstream_port`.
    pub async fn start(upstream_port: u16) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("redis://{}", listener.local_addr().expect("a local address"));
        let control = std::sync::Arc::new(LinkControl::default());
        let shared = control.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let control = shared.clone();
                let connection = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let requests = pump(
                        client_read,
                        server_write,
                        control.hold_requests.subscribe(),
                        &control.held,
                    );
                    let replies = pump(
                        server_read,
                        client_write,
                        control.hold_replies.subscribe(),
                        &control.held,
                    );
                    tokio::select! {
                        () = requests => {}
                        () = replies => {}
                    }
                });
                shared
                    .connections
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(connection);
            }
        });
        FaultyLink { url, control, task }
    }

    /// Requests are held (true) or passed on (false).
    pub fn hold_requests(&self, hold: bool) {
        self.control.hold_requests.send_replace(hold);
    }

    /// Replies are held (true) or passed on (false).
    pub fn hold_replies(&self, hold: bool) {
        self.control.hold_replies.send_replace(hold);
    }

    /// Ends every connection through the proxy, dropping what it held, and
    /// returns once they are all closed (new ones are accepted).
    pub async fn cut(&self) {
        let connections: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .control
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }

    /// Completes once bytes arrived that are being held.
    pub async fn held_bytes_arrived(&self) {
        tokio::time::timeout(PATIENCE, self.control.held.notified())
            .await
            .expect("held bytes arrive at the proxy");
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.task.abort();
        for connection in self
            .control
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            connection.abort();
        }
    }
}

/// Copies `from` to `to`; while `hold` is true, bytes read are kept back (and
/// `held` notified) until it turns false.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: tokio::sync::watch::Receiver<bool>,
    held: &tokio::sync::Notify,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if *hold.borrow_and_update() {
            held.notify_waiters();
            held.notify_one();
            if hold.wait_for(|hold| !*hold).await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
