//! The codec of every pgfleet.v1 service: prost's, with a smaller first
//! buffer than tonic's 8 KiB.
//!
//! A stream holds its encode and decode buffers for its whole life, and the
//! collector holds one ingest stream per agent: at 10,000 agents, tonic's
//! 8 KiB each way is 160 MiB of buffers that a 1 KiB batch a second never
//! fills. A buffer that a larger message needs grows to it (`BytesMut`), so
//! only its first size changes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// The first size of a stream's buffers.
const BUFFER_BYTES: usize = 1024;

/// How much a stream encodes before it yields, as tonic has it.
const YIELD_AFTER_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_AFTER_BYTES)
}

/// Prost's codec with [`BUFFER_BYTES`] buffers (named in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
