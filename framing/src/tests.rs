#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keybroker_common::protocol::{ErrorCode, Limits, MAX_FRAME_LEN, Message, WireError, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::sync::mpsc;

use super::*;

fn hello() -> Message {
    Message::hello("framing-test/1")
}

fn error(text: &str) -> Message {
    Message::Error {
        error: WireError::new(ErrorCode::BadRequest, text),
    }
}

#[tokio::test]
async fn a_frame_in_pieces_is_one_message() {
    let (mut a, b) = duplex(64);
    let mut reader = FramedReader::new(b, Limits::default());
    let frame = encode(&hello()).unwrap();
    let writer = tokio::spawn(async move {
        for byte in frame {
            a.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        a
    });
    let got = reader.next_frame().await.unwrap().unwrap();
    assert_eq!(got.message, hello());
    assert_eq!(
        got.body_len,
        encode(&hello()).unwrap().len() - LENGTH_PREFIX_LEN
    );
    drop(writer.await.unwrap());
    assert!(reader.next().await.unwrap().is_none(), "clean end");
}

#[tokio::test]
async fn several_frames_in_one_read_are_each_returned() {
    let (mut a, b) = duplex(4096);
    let mut bytes = encode(&hello()).unwrap();
    bytes.extend(encode(&Message::Goodbye).unwrap());
    bytes.extend(encode(&error("third")).unwrap());
    a.write_all(&bytes).await.unwrap();
    drop(a);
    let mut reader = FramedReader::new(b, Limits::default());
    assert_eq!(reader.next().await.unwrap(), Some(hello()));
    assert_eq!(reader.next().await.unwrap(), Some(Message::Goodbye));
    assert_eq!(reader.next().await.unwrap(), Some(error("third")));
    assert_eq!(reader.next().await.unwrap(), None);
}

#[tokio::test]
async fn an_oversized_prefix_is_refused_without_waiting_or_allocating() {
    let (mut a, b) = duplex(64);
    // The prefix alone, the stream left open: the reader must not wait for
    // (or make room for) the announced body.
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::new(1024));
    let e = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::Protocol(ProtocolError::FrameTooLarge { max: 1024, .. })
        ),
        "{e:?}"
    );
    assert!(reader.buf.capacity() <= 2 * MAX_READ_CHUNK);
    // Failed for good: framing cannot resynchronize.
    a.write_all(&encode(&hello()).unwrap()).await.unwrap();
    assert!(matches!(
        reader.next().await,
        Err(ReadError::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
    // The default limit is the protocol's.
    let (mut a, b) = duplex(64);
    let too_big = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
    a.write_all(&too_big.to_be_bytes()).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert!(matches!(
        reader.next().await,
        Err(ReadError::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
}

#[tokio::test]
async fn end_of_stream_mid_frame_is_truncated_not_clean() {
    let frame = encode(&hello()).unwrap();
    for cut in [1, LENGTH_PREFIX_LEN, frame.len() - 1] {
        let (mut a, b) = duplex(4096);
        a.write_all(&frame[..cut]).await.unwrap();
        drop(a);
        let mut reader = FramedReader::new(b, Limits::default());
        match reader.next().await {
            Err(ReadError::Truncated { buffered }) => assert_eq!(buffered, cut),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_and_empty_frames_are_protocol_errors() {
    let (mut a, b) = duplex(4096);
    a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert!(matches!(reader.next().await, Err(ReadError::Protocol(_))));
    let (mut a, b) = duplex(4096);
    a.write_all(&[0, 0, 0, 0]).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert!(matches!(
        reader.next().await,
        Err(ReadError::Protocol(ProtocolError::EmptyFrame))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_read_timeout_keeps_the_partial_frame() {
    let (mut a, b) = duplex(4096);
    let frame = encode(&hello()).unwrap();
    a.write_all(&frame[..3]).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert!(matches!(
        reader.next_within(Duration::from_secs(1)).await,
        Err(ReadError::Timeout(_))
    ));
    assert_eq!(reader.buffered(), &frame[..3]);
    a.write_all(&frame[3..]).await.unwrap();
    assert_eq!(
        reader.next_within(Duration::from_secs(1)).await.unwrap(),
        Some(hello())
    );
}

#[tokio::test]
async fn bytes_after_the_last_frame_are_handed_back() {
    let (mut a, b) = duplex(4096);
    let mut bytes = encode(&Message::TunnelOpened).unwrap();
    bytes.extend_from_slice(b"raw tunnel bytes");
    a.write_all(&bytes).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert_eq!(reader.next().await.unwrap(), Some(Message::TunnelOpened));
    let (_io, early) = reader.into_parts();
    assert_eq!(early, b"raw tunnel bytes");
}

#[tokio::test]
async fn read_exact_message_reads_not_a_byte_more() {
    let (mut a, mut b) = duplex(4096);
    let mut bytes = encode(&Message::TunnelOpened).unwrap();
    bytes.extend_from_slice(b"tail");
    a.write_all(&bytes).await.unwrap();
    let m = read_exact_message(&mut b, Limits::default()).await.unwrap();
    assert_eq!(m, Some(Message::TunnelOpened));
    let mut tail = [0u8; 4];
    b.read_exact(&mut tail).await.unwrap();
    assert_eq!(&tail, b"tail");
    // Oversized: refused from the prefix alone.
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(matches!(
        read_exact_message(&mut b, Limits::new(64)).await,
        Err(ReadError::Protocol(ProtocolError::FrameTooLarge {
            max: 64,
            ..
        }))
    ));
    // End of stream: clean before a frame, truncated inside one.
    let (mut a, mut b) = duplex(4096);
    a.write_all(&encode(&hello()).unwrap()[..6]).await.unwrap();
    drop(a);
    assert!(matches!(
        read_exact_message(&mut b, Limits::default()).await,
        Err(ReadError::Truncated { .. })
    ));
    let (a, mut b) = duplex(4096);
    drop(a);
    assert!(
        read_exact_message(&mut b, Limits::default())
            .await
            .unwrap()
            .is_none()
    );
}

/// Counts the writes that reach the stream.
struct CountingWriter {
    writes: usize,
    bytes: Vec<u8>,
}

impl AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn queued_messages_are_written_in_one_batch() {
    let (tx, mut rx) = mpsc::channel(16);
    for i in 0..5 {
        tx.send(error(&format!("message {i}"))).await.unwrap();
    }
    drop(tx);
    let mut w = FramedWriter::new(CountingWriter {
        writes: 0,
        bytes: Vec::new(),
    });
    w.run_queue(&mut rx, |batch, msg: Message| {
        batch.push(&msg).unwrap();
    })
    .await
    .unwrap();
    let sink = w.into_inner();
    assert_eq!(sink.writes, 1, "five ready messages, one write");
    let (mut a, b) = duplex(64 * 1024);
    a.write_all(&sink.bytes).await.unwrap();
    drop(a);
    let mut reader = FramedReader::new(b, Limits::default());
    for i in 0..5 {
        assert_eq!(
            reader.next().await.unwrap(),
            Some(error(&format!("message {i}")))
        );
    }
    assert_eq!(reader.next().await.unwrap(), None);
}

#[tokio::test]
async fn send_all_is_one_write_and_a_bad_message_writes_nothing() {
    let mut w = FramedWriter::new(CountingWriter {
        writes: 0,
        bytes: Vec::new(),
    });
    w.send_all([&hello(), &Message::Goodbye]).await.unwrap();
    assert_eq!(w.get_mut().writes, 1);
    let before = w.get_mut().bytes.len();
    // A frame over the protocol limit cannot be encoded.
    let huge = error(&"x".repeat(MAX_FRAME_LEN + 1));
    assert!(matches!(
        w.send_all([&Message::Goodbye, &huge]).await,
        Err(WriteError::Encode(ProtocolError::FrameTooLarge { .. }))
    ));
    assert!(w.batch_mut().is_empty());
    w.flush().await.unwrap();
    assert_eq!(w.get_mut().bytes.len(), before);
}

#[tokio::test]
async fn a_credentials_batch_is_secret_and_emptied_after_writing() {
    use keybroker_common::protocol::AwsCredentialsWire;
    use keybroker_common::secret::SecretString;
    let creds = Message::Credentials {
        id: 1,
        result: Ok(AwsCredentialsWire {
            access_key_id: "AKIAFRAMINGTEST00000".into(),
            secret_access_key: SecretString::from_str_copy("framing-test-secret"),
            session_token: None,
            expiration_ms: None,
        }),
    };
    let (a, b) = duplex(4096);
    let mut w = FramedWriter::new(a);
    w.queue(&Message::Goodbye).unwrap();
    assert!(!w.batch_mut().is_secret());
    w.queue(&creds).unwrap();
    assert!(w.batch_mut().is_secret());
    w.flush().await.unwrap();
    assert!(w.batch_mut().is_empty());
    assert!(!w.batch_mut().is_secret());
    let mut reader = FramedReader::new(b, Limits::default());
    assert_eq!(reader.next().await.unwrap(), Some(Message::Goodbye));
    assert_eq!(reader.next().await.unwrap(), Some(creds));
}

#[tokio::test]
async fn a_writer_to_a_closed_peer_fails() {
    let (a, b) = duplex(64);
    drop(b);
    let mut w = FramedWriter::new(a);
    assert!(matches!(w.send(&hello()).await, Err(WriteError::Io(_))));
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tx.send(encode(&hello()).unwrap()).unwrap();
    assert!(
        w.run_queue(&mut rx, |batch, frame| batch.push_encoded(&frame))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn try_next_decodes_only_what_is_buffered() {
    let (mut a, b) = duplex(4096);
    let mut bytes = encode(&hello()).unwrap();
    bytes.extend(encode(&Message::Goodbye).unwrap());
    bytes.extend(&encode(&error("partial")).unwrap()[..5]);
    a.write_all(&bytes).await.unwrap();
    let mut reader = FramedReader::new(b, Limits::default());
    assert!(reader.try_next().unwrap().is_none(), "nothing read yet");
    assert_eq!(reader.next().await.unwrap(), Some(hello()));
    // The rest of that read is buffered: Goodbye without another read.
    let f = reader.try_next().unwrap().unwrap();
    assert_eq!(f.message, Message::Goodbye);
    assert!(reader.try_next().unwrap().is_none(), "a partial frame");
    assert_eq!(reader.buffered().len(), 5);
}

#[test]
fn credentials_that_fail_to_encode_still_mark_the_batch_secret() {
    use keybroker_common::protocol::AwsCredentialsWire;
    use keybroker_common::secret::SecretString;
    // A secret key that could inject a header: refused by the encoder, after
    // part of the frame may have been written into the buffer.
    let creds = Message::Credentials {
        id: 7,
        result: Ok(AwsCredentialsWire {
            access_key_id: "AKIAFRAMINGTEST00000".into(),
            secret_access_key: SecretString::from_str_copy("abc\r\nX-Injected: x"),
            session_token: None,
            expiration_ms: None,
        }),
    };
    let mut batch = Batch::new();
    batch.push(&Message::Goodbye).unwrap();
    let before = batch.len();
    assert!(batch.push(&creds).is_err());
    assert_eq!(batch.len(), before, "no bytes added");
    assert!(batch.is_secret(), "zeroized once written all the same");
}
