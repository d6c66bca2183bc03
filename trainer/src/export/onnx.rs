//! The trained model as an ONNX graph (IR 8, opset 13) that any ONNX runtime runs: input `input`
//! of `[batch, features]` rows as the trainer reads them, output `logits` of `[batch, classes]`.
//! Images are reshaped to NHWC and transposed to NCHW for the convolutions; dropout, an identity
//! at inference, is left out. The protobuf is written by hand: the few messages the graph needs
//! do not warrant a code generator.

use crate::export::tensors::Tensor;
use crate::nn::model::{Layer, Network};

/// ONNX data types.
const FLOAT: i64 = 1;
const INT64: i64 = 7;

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(value as u64);
        self
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    fn string(&mut self, field: u32, text: &str) -> &mut Self {
        self.bytes(field, text.as_bytes())
    }

    fn message(&mut self, field: u32, message: Message) -> &mut Self {
        self.bytes(field, &message.0)
    }
}

/// AttributeProto of a list of integers.
fn ints(name: &str, values: &[i64]) -> Message {
    let mut attribute = Message::default();
    attribute.string(1, name).int(20, 7);
    for &v in values {
        attribute.int(8, v);
    }
    attribute
}

/// AttributeProto of one integer.
fn int(name: &str, value: i64) -> Message {
    let mut attribute = Message::default();
    attribute.string(1, name).int(20, 2).int(3, value);
    attribute
}

/// TensorProto with raw little-endian data.
fn initializer(name: &str, dims: &[usize], data_type: i64, raw: Vec<u8>) -> Message {
    let mut tensor = Message::default();
    for &d in dims {
        tensor.int(1, d as i64);
    }
    tensor.int(2, data_type).string(8, name).bytes(9, &raw);
    tensor
}

/// ValueInfoProto of a float tensor of `[batch, width]`.
fn value_info(name: &str, width: usize) -> Message {
    let mut batch = Message::default();
    batch.string(2, "batch");
    let mut columns = Message::default();
    columns.int(1, width as i64);
    let mut shape = Message::default();
    shape.message(1, batch).message(1, columns);
    let mut tensor_type = Message::default();
    tensor_type.int(1, FLOAT).message(2, shape);
    let mut type_proto = Message::default();
    type_proto.message(1, tensor_type);
    let mut info = Message::default();
    info.string(1, name).message(2, type_proto);
    info
}

/// The graph being built: its nodes and initializers, and the name of the latest output.
struct Graph {
    graph: Message,
    last: String,
    count: usize,
}

impl Graph {
    /// Appends `op` on the latest output plus `extra` inputs; its output becomes the latest.
    fn node(&mut self, op: &str, extra: &[&str], attributes: Vec<Message>) {
        self.count += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.count);
        let mut node = Message::default();
        node.string(1, &self.last);
        for input in extra {
            node.string(1, input);
        }
        node.string(2, &output).string(3, &output).string(4, op);
        for attribute in attributes {
            node.message(5, attribute);
        }
        self.graph.message(1, node);
        self.last = output;
    }

    fn float_initializer(&mut self, tensor: &Tensor) {
        let raw = tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph
            .message(5, initializer(&tensor.name, &tensor.shape, FLOAT, raw));
    }

    fn shape_initializer(&mut self, name: &str, shape: &[i64]) {
        let raw = shape.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph
            .message(5, initializer(name, &[shape.len()], INT64, raw));
    }
}

/// The ONNX model of `net` with the `tensors` of `tensors::to_standard`; `image` is the
/// `[height, width, channels]` of a row when the network convolves.
pub fn model(
    net: &Network,
    tensors: &[Tensor],
    image: Option<[usize; 3]>,
    producer_version: &str,
) -> Result<Vec<u8>, String> {
    if net.has_batch_norm() {
        return Err("batch normalisation is folded into the layers before it ahead of export (export::fold)".into());
    }
    let mut g = Graph {
        graph: Message::default(),
        last: "input".into(),
        count: 0,
    };
    g.graph.string(2, "ferrotrain");
    let tensor = |name: &str| {
        tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("no tensor {name}"))
    };
    let names: Vec<String> = net.parameter_layers().into_iter().map(|l| l.name).collect();
    let mut next = names.iter();
    let mut spatial = false;
    for layer in &net.layers {
        match *layer {
            Layer::Conv { kernel, pad, .. } => {
                if !spatial {
                    let [h, w, c] =
                        image.ok_or("a convolution needs the image shape of the rows")?;
                    g.shape_initializer("image_shape", &[-1, h as i64, w as i64, c as i64]);
                    g.node("Reshape", &["image_shape"], vec![]);
                    g.node("Transpose", &[], vec![ints("perm", &[0, 3, 1, 2])]);
                    spatial = true;
                }
                let name = next.next().ok_or("more layers than names")?;
                let (weight, bias) = (format!("{name}.weight"), format!("{name}.bias"));
                g.float_initializer(tensor(&weight)?);
                g.float_initializer(tensor(&bias)?);
                let (k, p) = (kernel as i64, pad as i64);
                g.node(
                    "Conv",
                    &[&weight, &bias],
                    vec![ints("kernel_shape", &[k, k]), ints("pads", &[p, p, p, p])],
                );
            }
            Layer::MaxPool { .. } => g.node(
                "MaxPool",
                &[],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
            Layer::Linear { .. } => {
                if spatial {
                    // NCHW flattened: the CHW order the standard dense weights read.
                    g.node("Flatten", &[], vec![int("axis", 1)]);
                    spatial = false;
                }
                let name = next.next().ok_or("more layers than names")?;
                let (weight, bias) = (format!("{name}.weight"), format!("{name}.bias"));
                g.float_initializer(tensor(&weight)?);
                g.float_initializer(tensor(&bias)?);
                g.node("Gemm", &[&weight, &bias], vec![int("transB", 1)]);
            }
            Layer::Relu => g.node("Relu", &[], vec![]),
            // `model` refuses unfolded batch normalisation.
            Layer::Dropout { .. } | Layer::BatchNorm { .. } => {}
        }
    }
    // The last node's output is renamed by an Identity so that the graph's output has a name a
    // caller can rely on.
    let mut identity = Message::default();
    identity
        .string(1, &g.last)
        .string(2, "logits")
        .string(3, "logits")
        .string(4, "Identity");
    g.graph.message(1, identity);
    g.graph
        .message(11, value_info("input", net.inputs))
        .message(12, value_info("logits", net.classes));
    let mut opset = Message::default();
    opset.int(2, 13);
    let mut model = Message::default();
    model
        .int(1, 8)
        .string(2, "ferrotrain")
        .string(3, producer_version)
        .message(7, g.graph)
        .message(8, opset);
    Ok(model.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_are_protobufs() {
        let mut m = Message::default();
        m.int(1, 300);
        assert_eq!(m.0, [0x08, 0xAC, 0x02]);
        let mut m = Message::default();
        m.int(3, -1);
        assert_eq!(m.0.len(), 11, "a negative int64 is ten bytes of varint");
        let mut m = Message::default();
        m.string(2, "ab");
        assert_eq!(m.0, [0x12, 2, b'a', b'b']);
    }
}
