//! A direct ractor_cluster link between two peer processes, beside the routed path: the
//! baseline of the routed-call benchmark. Each side runs a second ractor_cluster node of its
//! own (same node server settings as every Syncra process, over a Unix socket); the echo side
//! answers in its actor, and the caller calls from the thread that drives its runtime, so the
//! figure is a ractor_cluster call with nothing of ours around it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServerMessage, RactorClusterMessage};
use syncra_protocol::listener::start_node_server;
use syncra_protocol::node::UnixLink;

const GROUP: &str = "bench.direct-echo";
const COOKIE: &str = "bench-direct";

/// The direct echo's mailbox.
#[derive(RactorClusterMessage)]
pub(crate) enum DirectMsg {
    /// Answer with the same bytes.
    #[rpc]
    Echo(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

struct DirectEcho;

impl Actor for DirectEcho {
    type Msg = DirectMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<DirectMsg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<DirectMsg>,
        msg: DirectMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let DirectMsg::Echo(bytes, port) = msg;
        let _ = port.send(bytes);
        Ok(())
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Serve the direct echo on a Unix socket at `path`, on a thread of its own.
pub(crate) fn serve(path: PathBuf) {
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let server = start_node_server("bench-direct-echo", COOKIE, (), true, None)
                .await
                .expect("the direct node server")
                .server;
            Actor::spawn(None, DirectEcho, ())
                .await
                .expect("the direct echo");
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).expect("bind the direct socket");
            while let Ok((stream, _)) = listener.accept().await {
                let link = stream
                    .into_std()
                    .and_then(|s| UnixLink::new(s, "direct"))
                    .expect("the direct socket");
                let _ = server.cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: Box::new(link),
                    is_server: true,
                });
            }
        });
    });
}

/// The caller's end of the direct link.
pub(crate) struct DirectCaller {
    rt: tokio::runtime::Runtime,
    echo: ActorRef<DirectMsg>,
}

impl DirectCaller {
    /// Connect to the direct echo served at `path` (waiting up to `patience` for it).
    pub(crate) fn connect(path: &Path, patience: Duration) -> Result<DirectCaller, String> {
        let rt = current_thread();
        let echo = rt.block_on(async {
            let deadline = Instant::now() + patience;
            let server = start_node_server("bench-direct-caller", COOKIE, (), true, None)
                .await?
                .server;
            let stream = loop {
                match tokio::net::UnixStream::connect(path).await {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("connecting to {}: {e}", path.display()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            let link = stream
                .into_std()
                .and_then(|s| UnixLink::new(s, "direct"))
                .map_err(|e| e.to_string())?;
            ractor_cluster::client_connect_external(&server, Box::new(link))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let found = ractor::pg::get_members(&GROUP.to_owned())
                    .into_iter()
                    .find(|c| !c.get_id().is_local());
                match found {
                    Some(cell) => return Ok(ActorRef::<DirectMsg>::from(cell)),
                    None if Instant::now() > deadline => {
                        return Err("the direct echo never appeared".to_owned());
                    }
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })?;
        Ok(DirectCaller { rt, echo })
    }

    /// One call with `bytes`; its round trip in µs.
    pub(crate) fn call(&self, bytes: &[u8]) -> Result<f64, String> {
        let t = Instant::now();
        let back = self
            .rt
            .block_on(async { ractor::call_t!(self.echo, DirectMsg::Echo, 3000, bytes.to_vec()) })
            .map_err(|e| e.to_string())?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if back.len() != bytes.len() {
            return Err("the direct echo answered different bytes".to_owned());
        }
        Ok(us)
    }
}
