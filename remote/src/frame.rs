//! Length-prefixed MessagePack frames on a byte stream: `len: u32 BE | body`, `len` at most
//! the link's limit. A frame over the limit or that does not decode is an error naming both.

use serde::Serialize;
use serde::de::DeserializeOwned;
use syncra_protocol::wire;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended or failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The frame is too long or does not decode.
    #[error("{0}")]
    Decode(#[from] wire::DecodeError),
}

/// Largest frame [`write`] sends: what the other side of a Syncra link accepts. A larger one
/// is refused here, so that a peer is never made to drop the link over it.
pub const MAX_FRAME: usize = syncra_protocol::agent::MAX_FRAME;

/// Write one frame (at most [`MAX_FRAME`] bytes; a larger one is an error, nothing written).
pub async fn write<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
) -> std::io::Result<()> {
    let body = wire::encode(msg);
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte frame, over the link's limit of {MAX_FRAME}: not sent",
                body.len()
            ),
        ));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::other("a frame longer than 4 GiB"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Read one frame of at most `limit` bytes, decoded as a `T` (`what` names it in errors).
pub async fn read<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
    what: &'static str,
    limit: usize,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(wire::DecodeError::TooLarge { what, len, limit }.into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(wire::decode(what, &body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_garbage_ones_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write(&mut a, &(7u64, "x".to_owned())).await.unwrap();
        let got: (u64, String) = read(&mut b, "test frame", 1024).await.unwrap();
        assert_eq!(got, (7, "x".into()));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = read::<u64>(&mut b, "test frame", 1024).await.unwrap_err();
        assert!(e.to_string().contains("exceeds the limit of 1024"), "{e}");
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).await.unwrap();
        let e = read::<u64>(&mut b, "test frame", 1024).await.unwrap_err();
        assert!(e.to_string().contains("malformed test frame"), "{e}");
        drop(a);
        assert!(matches!(
            read::<u64>(&mut b, "test frame", 1024).await,
            Err(FrameError::Io(_))
        ));
    }
}
