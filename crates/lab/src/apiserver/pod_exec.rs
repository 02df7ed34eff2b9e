//! `pods/<name>/exec` over WebSocket, as kubectl 1.30 and later speak it (`v5.channel.k8s.io`,
//! and `v4.channel.k8s.io`): each binary message starts with its channel (0 stdin, 1 stdout,
//! 2 stderr, 3 the final `Status`, 4 terminal resizes), v5 adds `[255, channel]` to close one;
//! the `Status` carries the command's exit code, which kubectl exits with.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::http::{Body, Query, full};
use super::pod_runtime::ExecRequest;
use super::routing::Target;
use super::state::ApiState;
use super::status::ApiError;

/// The subprotocols served, most preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const CLOSE: u8 = 255;
/// After the command exits, how long output still open (a background child holding the pipes)
/// is waited for.
const DRAIN: Duration = Duration::from_secs(2);

/// The subprotocol to speak: the first the client offers that is served.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().to_owned())
        .collect();
    offered.iter().find_map(|protocol| {
        PROTOCOLS
            .iter()
            .find(|served| **served == protocol.as_str())
            .copied()
    })
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The `Status` the error channel carries when the command ended.
pub fn exit_status(command: &[String], code: Option<i32>) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => {
            json!({"metadata": {}, "status": "Failure", "message": format!("command {command:?} was killed by a signal"), "reason": "InternalError"})
        }
    }
}

pub fn serve(
    state: Arc<ApiState>,
    target: &Target,
    query: &Query,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let runtime = state.pod_runtime.get().ok_or_else(|| {
        ApiError::bad_request(
            "no kubelet runs this cluster's pods; nothing can be executed in them",
        )
    })?;
    let headers = request.headers();
    if !is_websocket(headers) {
        let mut error = ApiError::bad_request(
            "this API server serves exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io), as kubectl 1.30 and later use by default; SPDY (older kubectl) is not served",
        );
        error.code = StatusCode::BAD_REQUEST;
        return Err(error);
    }
    let Some(protocol) = choose_protocol(headers) else {
        return Err(ApiError::bad_request(format!(
            "none of the offered WebSocket subprotocols is served (served: {})",
            PROTOCOLS.join(", ")
        )));
    };
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("the WebSocket upgrade has no Sec-WebSocket-Key"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let command: Vec<String> = query.all("command").map(str::to_owned).collect();
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let stdin = query.flag("stdin");
    let exec = ExecRequest {
        namespace: target.namespace().to_owned(),
        pod: target.name.clone().unwrap_or_default(),
        container: query.get("container").map(str::to_owned),
        command: command.clone(),
        stdin,
    };
    let child = runtime.exec(&exec)?;
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let stream = WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                relay(stream, child, command, protocol == "v5.channel.k8s.io").await;
            }
            Err(error) => tracing::debug!(%error, "an exec connection was not upgraded"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
        .body(full(bytes::Bytes::new()))
        .expect("static headers are valid"))
}

/// Copies an output pipe into channel messages.
async fn pump(mut pipe: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Vec<u8>>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                buffer[0] = channel;
                if out.send(buffer[..=read].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn relay<S>(
    stream: WebSocketStream<S>,
    mut child: tokio::process::Child,
    command: Vec<String>,
    closable: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = stream.split();
    let (output, mut outputs) = mpsc::channel::<Vec<u8>>(16);
    let mut pumps = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(stdout, STDOUT, output.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(stderr, STDERR, output.clone())));
    }
    drop(output);
    let mut stdin = child.stdin.take();
    let mut status = None;
    let mut outputs_open = true;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drain = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.ok().and_then(|exited| exited.code()));
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
            }
            chunk = outputs.recv(), if outputs_open => match chunk {
                Some(chunk) => {
                    if sink.send(Message::binary(chunk)).await.is_err() {
                        let _ = child.start_kill();
                        return;
                    }
                }
                None => outputs_open = false,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    STDIN => {
                        if let Some(pipe) = stdin.as_mut()
                            && pipe.write_all(&data[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    CLOSE if closable && data.get(1) == Some(&STDIN) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: the command goes too.
                    let _ = child.start_kill();
                    return;
                }
                Some(Ok(_)) => {}
            },
            () = drain => outputs_open = false,
        }
        if let Some(code) = status
            && !outputs_open
        {
            for pump in &pumps {
                pump.abort();
            }
            let mut message = vec![ERROR];
            message.extend(serde_json::to_vec(&exit_status(&command, code)).unwrap_or_default());
            let _ = sink.send(Message::binary(message)).await;
            // A close without a code (1005) is an error to kubectl's WebSocket library.
            let normal = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = sink.send(Message::Close(Some(normal))).await;
            let _ = sink.close().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_offered_protocol_is_spoken() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io"
                .parse()
                .unwrap(),
        );
        assert_eq!(choose_protocol(&headers), Some("v5.channel.k8s.io"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "v4.channel.k8s.io,channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&headers), Some("v4.channel.k8s.io"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "base64.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(choose_protocol(&headers), None);
    }

    #[test]
    fn exit_codes_travel_as_kubernetes_statuses() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let failure = exit_status(&command, Some(3));
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&command, Some(0))["status"], "Success");
    }
}
