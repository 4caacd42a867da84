//! A protobuf codec whose requests are shared (`Arc`), so a call that is
//! retried on another replica sends the same request without copying it (a
//! request may carry megabytes of images).

use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// Encodes `Arc<T>`, decodes `U`.
#[derive(Debug)]
pub struct SharedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SharedCodec<T, U> {
    fn default() -> Self {
        SharedCodec(PhantomData)
    }
}

impl<T, U> Codec for SharedCodec<T, U>
where
    T: Message + Send + Sync + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = Arc<T>;
    type Decode = U;
    type Encoder = SharedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SharedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(services::codec::buffer_settings())
    }
}

/// The encoding half of [`SharedCodec`].
#[derive(Debug)]
pub struct SharedEncoder<T>(PhantomData<T>);

impl<T: Message + Send + Sync + 'static> Encoder for SharedEncoder<T> {
    type Item = Arc<T>;
    type Error = Status;

    fn encode(&mut self, item: Arc<T>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(format!("encoding the request failed: {e}")))
    }
}
