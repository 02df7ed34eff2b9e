//! Istio's TCP metadata exchange (Envoy's `istio.metadata_exchange` network filter), for mTLS
//! connections that negotiated the ALPN `istio-peer-exchange`: each side first sends a preface,
//! a 4-byte magic number and a 4-byte length (both big-endian), then a protobuf `Any` holding a
//! `Struct` with `x-envoy-peer-metadata` (its node metadata) and `x-envoy-peer-metadata-id`.
//! The application's bytes follow. This is how the server's TCP series know the source workload,
//! which the client's certificate does not say.
//!
//! Both sides here send their preface as soon as the handshake is done. Envoy sends its own when
//! the first bytes arrive, so a Causeway preface also starts Envoy's, and neither side waits for
//! the application to speak first.

use crate::dataplane::HANDSHAKE_TIMEOUT;
use crate::peer_metadata::{METADATA_HEADER, PeerWorkload, from_struct};
use crate::sniff::Rewind;
use crate::telemetry::TrafficLabels;
use envoy_types::pb::google::protobuf::{Any, Struct, value::Kind};
use prost::Message;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN both sides must have agreed on before either sends a preface.
pub const ALPN: &[u8] = b"istio-peer-exchange";
const MAGIC: u32 = 0x3D23_0467;
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
const HEADER_BYTES: usize = 8;
/// A peer's preface is a few hundred bytes; a longer length is not believed.
const MAX_PREFACE: usize = 64 * 1024;

/// The preface for `exchange`: `metadata` is the node metadata `Struct`, `id` the node ID.
pub fn preface(metadata: &Struct, id: &str) -> Vec<u8> {
    let mut data = Struct::default();
    data.fields.insert(
        METADATA_HEADER.into(),
        envoy_types::pb::google::protobuf::Value {
            kind: Some(Kind::StructValue(metadata.clone())),
        },
    );
    data.fields.insert(
        crate::peer_metadata::ID_HEADER.into(),
        envoy_types::pb::google::protobuf::Value {
            kind: Some(Kind::StringValue(id.to_owned())),
        },
    );
    let any = Any {
        type_url: STRUCT_TYPE_URL.into(),
        value: data.encode_to_vec(),
    }
    .encode_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_BYTES + any.len());
    bytes.extend_from_slice(&MAGIC.to_be_bytes());
    bytes.extend_from_slice(&(any.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&any);
    bytes
}

/// After an mTLS handshake, on either side: when it `agreed` on [`ALPN`], the exchange, with
/// what the peer said put into `labels`; otherwise the stream as it is.
pub async fn after_handshake<S>(
    stream: S,
    agreed: bool,
    own_preface: &[u8],
    labels: &mut TrafficLabels,
) -> io::Result<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !agreed {
        return Ok(Rewind::new(Vec::new(), stream));
    }
    let (peer, stream) = exchange(stream, own_preface, HANDSHAKE_TIMEOUT).await?;
    if let Some(peer) = peer {
        peer.apply(labels);
    }
    Ok(stream)
}

/// Sends `own_preface`, then reads the peer's for up to `wait`. The stream comes back with
/// whatever was read past the peer's preface (or, when the peer sent none, everything read)
/// ready to be read again.
pub async fn exchange<S>(
    mut stream: S,
    own_preface: &[u8],
    wait: Duration,
) -> io::Result<(Option<PeerWorkload>, Rewind<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(own_preface).await?;
    stream.flush().await?;
    let mut read = Vec::with_capacity(1024);
    let peer = tokio::time::timeout(wait, read_preface(&mut stream, &mut read))
        .await
        .unwrap_or(Ok(None))?;
    let rest = match &peer {
        Some((_, used)) => read.split_off(*used),
        None => read,
    };
    Ok((peer.map(|(peer, _)| peer), Rewind::new(rest, stream)))
}

/// The peer's workload and how many bytes of `read` its preface took; `None` when the bytes
/// are not a preface (an Envoy without the filter, or a closed stream).
async fn read_preface<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
) -> io::Result<Option<(PeerWorkload, usize)>> {
    while read.len() < HEADER_BYTES {
        if stream.read_buf(read).await? == 0 {
            return Ok(None);
        }
    }
    let word = |at: usize| u32::from_be_bytes([read[at], read[at + 1], read[at + 2], read[at + 3]]);
    if word(0) != MAGIC {
        return Ok(None);
    }
    let length = word(4) as usize;
    if length > MAX_PREFACE {
        return Ok(None);
    }
    let end = HEADER_BYTES + length;
    while read.len() < end {
        if stream.read_buf(read).await? == 0 {
            return Ok(None);
        }
    }
    Ok(decode(&read[HEADER_BYTES..end]).map(|peer| (peer, end)))
}

/// The workload in a preface's `Any`.
fn decode(any: &[u8]) -> Option<PeerWorkload> {
    let any = Any::decode(any).ok()?;
    if any.type_url != STRUCT_TYPE_URL {
        return None;
    }
    let data = Struct::decode(any.value.as_slice()).ok()?;
    match data.fields.get(METADATA_HEADER)?.kind.as_ref()? {
        Kind::StructValue(metadata) => Some(from_struct(metadata)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::Workload;
    use crate::peer_metadata::OwnMetadata;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn both_sides_learn_the_other_and_the_application_bytes_follow_untouched() {
        let own = OwnMetadata::of(&Workload::sleep_for_tests());
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server_side = tokio::spawn({
            let preface = own.tcp_preface.clone();
            async move {
                let (peer, mut stream) = exchange(server, &preface, WAIT).await.unwrap();
                let mut first = [0u8; 5];
                stream.read_exact(&mut first).await.unwrap();
                (peer, first)
            }
        });
        let (peer, mut stream) = exchange(client, &own.tcp_preface, WAIT).await.unwrap();
        let peer = peer.expect("the server's preface");
        assert_eq!(peer.workload, "sleep");
        assert_eq!(peer.namespace, "sample");
        stream.write_all(b"hello").await.unwrap();
        let (peer, first) = server_side.await.unwrap();
        assert_eq!(peer.expect("the client's preface").app, "sleep");
        assert_eq!(&first, b"hello");
    }

    #[tokio::test]
    async fn a_peer_without_the_exchange_loses_no_bytes() {
        let own = OwnMetadata::of(&Workload::sleep_for_tests());
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        // An application protocol's first bytes instead of a preface, then the peer is done.
        server.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        server.shutdown().await.unwrap();
        let (peer, mut stream) = exchange(client, &own.tcp_preface, WAIT).await.unwrap();
        assert!(peer.is_none());
        let mut replayed = Vec::new();
        stream.read_to_end(&mut replayed).await.unwrap();
        assert_eq!(replayed, b"SSH-2.0-OpenSSH_9.2\r\n");
    }

    #[tokio::test]
    async fn a_silent_peer_or_a_lying_length_gives_up_without_losing_bytes() {
        let own = OwnMetadata::of(&Workload::sleep_for_tests());
        let (client, _silent) = tokio::io::duplex(64 * 1024);
        let (peer, _) = exchange(client, &own.tcp_preface, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(peer.is_none());

        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut lying = MAGIC.to_be_bytes().to_vec();
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        server.write_all(&lying).await.unwrap();
        server.shutdown().await.unwrap();
        let (peer, mut stream) = exchange(client, &own.tcp_preface, WAIT).await.unwrap();
        assert!(peer.is_none());
        let mut replayed = Vec::new();
        stream.read_to_end(&mut replayed).await.unwrap();
        assert_eq!(replayed, lying);
    }

    #[test]
    fn the_preface_is_magic_length_and_an_any_of_a_struct() {
        let own = OwnMetadata::of(&Workload::sleep_for_tests());
        let preface = &own.tcp_preface;
        assert_eq!(&preface[..4], &[0x3D, 0x23, 0x04, 0x67]);
        let length = u32::from_be_bytes(preface[4..8].try_into().unwrap()) as usize;
        assert_eq!(preface.len(), 8 + length);
        let any = Any::decode(&preface[8..]).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
        let data = Struct::decode(any.value.as_slice()).unwrap();
        assert!(data.fields.contains_key("x-envoy-peer-metadata"));
        assert!(matches!(
            data.fields["x-envoy-peer-metadata-id"].kind,
            Some(Kind::StringValue(ref id)) if id.starts_with("sidecar~")
        ));
    }
}
