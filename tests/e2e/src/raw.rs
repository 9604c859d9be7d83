//! RPCs called by name with request bodies built from the descriptor set
//! the servers' reflection serves: the authorization matrix and the fuzz
//! test cover every RPC there is, including ones added later, without a
//! client per service.

use std::collections::BTreeMap;
use std::str::FromStr;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Request and response bodies as bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One RPC as the descriptor set describes it.
#[derive(Debug, Clone)]
pub struct Rpc {
    /// `package.Service/Method`.
    pub path: String,
    /// Full name of the request message (`.package.Message`).
    pub input: String,
    /// The answer is a stream.
    pub server_streaming: bool,
}

/// The platform's messages by full name (`.package.Message`) and its RPCs.
pub struct Descriptors {
    /// Every message, nested ones included.
    pub messages: BTreeMap<String, DescriptorProto>,
    /// Every RPC of every service.
    pub rpcs: Vec<Rpc>,
}

impl Descriptors {
    /// From the descriptor set the servers' reflection serves.
    pub fn of_platform() -> Self {
        let set = FileDescriptorSet::decode(feed_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut messages = BTreeMap::new();
        let mut rpcs = Vec::new();
        for file in &set.file {
            let package = file.package();
            let mut stack: Vec<(String, &DescriptorProto)> = file
                .message_type
                .iter()
                .map(|m| (format!(".{package}.{}", m.name()), m))
                .collect();
            while let Some((name, m)) = stack.pop() {
                stack.extend(m.nested_type.iter().map(|n| (format!("{name}.{}", n.name()), n)));
                messages.insert(name, m.clone());
            }
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(Rpc {
                        path: format!("{package}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                        server_streaming: method.server_streaming(),
                    });
                }
            }
        }
        Self { messages, rpcs }
    }

    /// The message `name`.
    pub fn message(&self, name: &str) -> &DescriptorProto {
        self.messages.get(name).unwrap_or_else(|| panic!("no message {name}"))
    }

    /// A message of type `ty` with only the integer at `path` (dotted field
    /// names through nested messages) set to `value`.
    pub fn with_field(&self, ty: &str, path: &str, value: u64) -> Vec<u8> {
        let m = self.message(ty);
        let (name, rest) = path.split_once('.').map_or((path, None), |(a, b)| (a, Some(b)));
        let field = m
            .field
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{ty} has no field {name}"));
        let mut out = Vec::new();
        match rest {
            None => {
                key(field.number(), 0, &mut out);
                varint(value, &mut out);
            }
            Some(rest) => {
                let inner = self.with_field(field.type_name(), rest, value);
                key(field.number(), 2, &mut out);
                varint(inner.len() as u64, &mut out);
                out.extend(inner);
            }
        }
        out
    }
}

/// Appends a protobuf varint.
pub fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a field key: its number and wire type.
pub fn key(number: i32, wire_type: u8, out: &mut Vec<u8>) {
    varint((u64::from(number as u32) << 3) | u64::from(wire_type), out);
}

/// The metadata of one call: `(name, value)` pairs, a name may repeat.
pub type Headers = Vec<(&'static str, String)>;

/// Calls `rpc` with `body` and `headers`, within 10 s. A stream counts as
/// answered once it opens (a refusal comes before that).
pub async fn call(channel: &Channel, rpc: &Rpc, body: Vec<u8>, headers: &Headers) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(std::time::Duration::from_secs(10));
    for (k, v) in headers {
        req.metadata_mut().append(*k, v.parse().expect("ascii header"));
    }
    let path = PathAndQuery::from_str(&format!("/{}", rpc.path)).expect("path");
    if rpc.server_streaming {
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    }
}
