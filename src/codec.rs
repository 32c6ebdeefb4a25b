//! The protobuf codec of vaultgate's own services: tonic-prost's, except that a request message
//! that does not decode (a string field that is not UTF-8, a truncated message, a wrong wire type)
//! is the caller's error, `INVALID_ARGUMENT` naming the field, instead of tonic-prost's `INTERNAL`;
//! and an answer is encoded into a buffer grown once to its size.
//!
//! build.rs names it with `codec_path`, so the generated clients use it too: a client that cannot
//! decode an answer also reports `INVALID_ARGUMENT` (only tests and the benchmark use them).

use crate::error::Error;
use std::marker::PhantomData;
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Status,
};

/// The first allocation of a call's decode and encode buffers (tonic's default is 8 KiB each).
/// vaultgate's messages are mostly far smaller (an Encrypt request of 64 bytes of plaintext is
/// about 100 bytes; the JWT travels in the headers), and a call waiting for its body holds its
/// decode buffer: with 10,000 calls in flight 8 KiB each was most of the gateway's memory. A
/// larger message grows the buffer as it arrives. The yield threshold stays tonic's (32 KiB).
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

/// The codec of every `vaultgate.v1` service: prost encoding, caller-error decoding.
#[derive(Debug, Clone)]
pub struct GatewayCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GatewayCodec<T, U> {
    fn default() -> Self {
        GatewayCodec(PhantomData)
    }
}

impl<T, U> Codec for GatewayCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = AnswerEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes one message with prost; a failure is `INVALID_ARGUMENT` (see the module doc).
/// tonic-prost's encoder, except that the buffer is grown once to the answer's size: from its
/// first 1 KiB, a 100-item batch answer grew it four times, copying it each time.
#[derive(Debug, Clone)]
pub struct AnswerEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for AnswerEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // prost fails only for want of room, which was just made.
        item.encode(buf).map_err(|e| Status::internal(format!("answer not encoded: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| Status::from(Error::undecodable(&e)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use crate::pb::vaultgate::v1::EncryptRequest;
    use tonic::Code;

    #[test]
    fn undecodable_requests_are_the_callers_error() {
        // Field 1 (key), length-delimited, holding the invalid UTF-8 bytes ff fe.
        let cases: &[(&[u8], &str)] = &[
            (&[0x0a, 0x02, 0xff, 0xfe], "EncryptRequest.key: invalid string value: data is not UTF-8 encoded"),
            (&[0x0a, 0x05, b'a'], "buffer underflow"),
            (&[0x0b], "invalid wire type"),
        ];
        for (bytes, want) in cases {
            let err = <EncryptRequest as prost::Message>::decode(*bytes).expect_err("does not decode");
            let status = tonic::Status::from(crate::error::Error::undecodable(&err));
            assert_eq!(status.code(), Code::InvalidArgument, "{bytes:?}");
            assert!(status.message().contains(want), "{bytes:?}: {}", status.message());
        }
    }
}
