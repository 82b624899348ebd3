//! Writes a [`FoldedGraph`] as ONNX (opset 13) with the prost types `tract_onnx::pb` exposes,
//! in fp32 or as QDQ int8: every conv and linear reads its input through a per-tensor
//! QuantizeLinear/DequantizeLinear pair, and its weight through a per-channel
//! DequantizeLinear of int8 codes. Biases stay f32, which TensorRT and onnxruntime accept.

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{self, Value};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::quantize::LayerQuant;
use crate::graph::{FoldedGraph, Layer};

pub const INPUT_NAME: &str = "images";
pub const OUTPUT_NAME: &str = "embedding";
pub const OPSET: i64 = 13;
/// ONNX IR version 7 goes with opset 13.
const IR_VERSION: i64 = 7;

/// The ONNX file's bytes. `quant` has one entry per layer (`Some` for convs and linears)
/// for the QDQ int8 model, or is `None` for fp32.
pub fn write_onnx(graph: &FoldedGraph, quant: Option<&[LayerQuant]>, doc: &str) -> Vec<u8> {
    build(graph, quant, doc).0.encode_to_vec()
}

/// The input tensor of every conv and linear, in [`FoldedGraph::quantized`] order: the
/// activations the int8 model quantises.
pub fn quantized_inputs(graph: &FoldedGraph) -> Vec<String> {
    build(graph, None, "").1
}

fn build(
    graph: &FoldedGraph,
    quant: Option<&[LayerQuant]>,
    doc: &str,
) -> (ModelProto, Vec<String>) {
    let mut b = GraphBuilder {
        quant,
        ..Default::default()
    };
    b.layers(&graph.layers, INPUT_NAME.to_string(), "", true);
    let [c, h, w] = graph.input_chw.map(|d| d as i64);
    let g = GraphProto {
        name: "encoder".into(),
        node: b.nodes,
        initializer: b.initializers,
        input: vec![value_info(INPUT_NAME, &[None, Some(c), Some(h), Some(w)])],
        output: vec![value_info(
            OUTPUT_NAME,
            &[None, Some(graph.embed_dim as i64)],
        )],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "deepcluster-edge host-train".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(g),
        ..Default::default()
    };
    (model, b.quantized_inputs)
}

#[derive(Default)]
struct GraphBuilder<'q> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// One per conv and linear, in [`FoldedGraph::quantized`] order (none: fp32).
    quant: Option<&'q [LayerQuant]>,
    /// The input tensor of each conv and linear so far.
    quantized_inputs: Vec<String>,
}

impl<'q> GraphBuilder<'q> {
    /// Emits `layers` on the tensor `x` and returns their output. Layer `i` writes `t{prefix}{i}`
    /// (at the top level, the last writes the graph's output); nodes without names of their
    /// own are named after the same tag.
    fn layers(&mut self, layers: &[Layer], mut x: String, prefix: &str, top: bool) -> String {
        for (i, layer) in layers.iter().enumerate() {
            let tag = format!("{prefix}{i}");
            let out = if top && i + 1 == layers.len() {
                OUTPUT_NAME.to_string()
            } else {
                format!("t{tag}")
            };
            match layer {
                Layer::Conv(c) => {
                    let q = self.next_quant(&x);
                    let x_in = self.activation(&x, q);
                    let w = self.weight(&c.name, &c.weight, &c.shape.map(|d| d as i64), q);
                    let mut inputs = vec![x_in, w];
                    if let Some(bias) = &c.bias {
                        inputs.push(self.f32_init(
                            &format!("{}.bias", c.name),
                            &[bias.len() as i64],
                            bias,
                        ));
                    }
                    let (kh, kw) = (c.shape[2] as i64, c.shape[3] as i64);
                    let (s, p) = (c.stride as i64, c.padding as i64);
                    self.node(
                        "Conv",
                        &c.name,
                        inputs,
                        &out,
                        vec![
                            ints("kernel_shape", &[kh, kw]),
                            ints("strides", &[s, s]),
                            ints("pads", &[p, p, p, p]),
                        ],
                    );
                }
                Layer::Relu => self.node("Relu", &format!("relu{tag}"), vec![x], &out, vec![]),
                Layer::MaxPool2x2 => self.node(
                    "MaxPool",
                    &format!("pool{tag}"),
                    vec![x],
                    &out,
                    vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                ),
                Layer::MaxPool { kernel, stride } => {
                    let (k, st) = (*kernel as i64, *stride as i64);
                    self.node(
                        "MaxPool",
                        &format!("pool{tag}"),
                        vec![x],
                        &out,
                        vec![ints("kernel_shape", &[k, k]), ints("strides", &[st, st])],
                    )
                }
                Layer::Flatten => self.node(
                    "Flatten",
                    &format!("flatten{tag}"),
                    vec![x],
                    &out,
                    vec![int("axis", 1)],
                ),
                Layer::GlobalAvgPool => {
                    let pooled = format!("{out}.pooled");
                    self.node(
                        "GlobalAveragePool",
                        &format!("gap{tag}"),
                        vec![x],
                        &pooled,
                        vec![],
                    );
                    self.node(
                        "Flatten",
                        &format!("flatten{tag}"),
                        vec![pooled],
                        &out,
                        vec![int("axis", 1)],
                    );
                }
                Layer::Linear(l) => {
                    let q = self.next_quant(&x);
                    let x_in = self.activation(&x, q);
                    let dims = [l.out_features as i64, l.in_features as i64];
                    let w = self.weight(&l.name, &l.weight, &dims, q);
                    let bias =
                        self.f32_init(&format!("{}.bias", l.name), &[l.bias.len() as i64], &l.bias);
                    self.node(
                        "Gemm",
                        &l.name,
                        vec![x_in, w, bias],
                        &out,
                        vec![int("transB", 1)],
                    );
                }
                Layer::InstanceNorm(n) => {
                    let dims = [n.scale.len() as i64];
                    let scale = self.f32_init(&format!("{}.scale", n.name), &dims, &n.scale);
                    let bias = self.f32_init(&format!("{}.bias", n.name), &dims, &n.bias);
                    self.node(
                        "InstanceNormalization",
                        &n.name,
                        vec![x, scale, bias],
                        &out,
                        vec![float("epsilon", n.eps as f32)],
                    );
                }
                Layer::Residual(r) => {
                    let body = self.layers(&r.body, x.clone(), &format!("{tag}.body"), false);
                    let shortcut = self.layers(&r.shortcut, x, &format!("{tag}.shortcut"), false);
                    self.node(
                        "Add",
                        &format!("add{tag}"),
                        vec![body, shortcut],
                        &out,
                        vec![],
                    );
                }
            }
            x = out;
        }
        x
    }

    /// The quantisation of the next conv or linear, whose input is `x`.
    fn next_quant(&mut self, x: &str) -> Option<&'q LayerQuant> {
        let k = self.quantized_inputs.len();
        self.quantized_inputs.push(x.to_string());
        self.quant.map(|q| &q[k])
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        out: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs,
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// `x` itself in fp32; in int8, `x` through a per-tensor Q/DQ pair. Returns the name to read.
    fn activation(&mut self, x: &str, q: Option<&LayerQuant>) -> String {
        let Some(q) = q else { return x.into() };
        let scale = self.f32_init(&format!("{x}.scale"), &[], &[q.input_scale]);
        let zero = self.i8_init(&format!("{x}.zero_point"), &[], &[0]);
        let (xq, xdq) = (format!("{x}.q"), format!("{x}.dq"));
        let inputs = vec![x.to_string(), scale, zero];
        self.node("QuantizeLinear", &xq, inputs.clone(), &xq, vec![]);
        let inputs = vec![xq, inputs[1].clone(), inputs[2].clone()];
        self.node("DequantizeLinear", &xdq, inputs, &xdq, vec![]);
        xdq
    }

    /// The weight initializer, or int8 codes and a per-channel (axis 0) DequantizeLinear.
    fn weight(&mut self, layer: &str, w: &[f32], dims: &[i64], q: Option<&LayerQuant>) -> String {
        let name = format!("{layer}.weight");
        let Some(q) = q else {
            return self.f32_init(&name, dims, w);
        };
        let out = dims[0];
        let codes = self.i8_init(&format!("{name}.int8"), dims, &q.weight_codes);
        let scale = self.f32_init(&format!("{name}.scale"), &[out], &q.weight_scales);
        let zero = self.i8_init(
            &format!("{name}.zero_point"),
            &[out],
            &vec![0; out as usize],
        );
        self.node(
            "DequantizeLinear",
            &name,
            vec![codes, scale, zero],
            &name,
            vec![int("axis", 0)],
        );
        name
    }

    fn f32_init(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, DataType::Float, raw)
    }

    fn i8_init(&mut self, name: &str, dims: &[i64], data: &[i8]) -> String {
        let raw = data.iter().map(|&v| v as u8).collect();
        self.init(name, dims, DataType::Int8, raw)
    }

    fn init(&mut self, name: &str, dims: &[i64], dt: DataType, raw: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: dt as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float tensor's declaration; `None` dims are the free batch dimension.
fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
