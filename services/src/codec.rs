//! The protobuf codec of every AgentService call, both ends: prost's, with
//! encode and decode buffers that start small.
//!
//! tonic starts each call's buffers at 8 KiB. A run's event stream lives as
//! long as the answer, so agent-svc's encode buffer and the gateway's decode
//! buffer were held for every open stream: with 10,000 streams open, 160 MB of
//! buffers for events of tens to hundreds of bytes. They grow when a message
//! needs more (a long final answer, a history page).

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial capacity of a call's encode and decode buffers (a typical run event
/// fits several times).
pub const BUFFER_BYTES: usize = 512;
/// Encoded bytes a response stream gathers before it yields them (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The buffer settings of [`LeanCodec`] (for codecs of their own, e.g. the
/// gateway's shared-request codec).
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// prost encoding with [`buffer_settings`]; the generated client and server
/// use it (`codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffer_settings())
    }
}
