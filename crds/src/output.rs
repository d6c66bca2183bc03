//! `spec.output`: the trained model a successful job leaves behind, in formats other frameworks
//! and runtimes load, and `status.output`, where it went. Rank 0 writes it after the last step;
//! `validate.rs` checks the rules the schema cannot express.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a successful job exports its trained model. The files are those of
/// `ferrotrain export`: `model.json` (the model card) always, with `model.safetensors`,
/// `model.onnx` and `model.int8.safetensors` as `formats` asks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// `s3://bucket/prefix` or `file:///path`; the files go under it. An `s3://` output is
    /// written with spec.checkpoint's endpoint, region and credentials.
    #[schemars(
        length(min = 1, max = 2048),
        pattern(r"^[A-Za-z][A-Za-z0-9+.-]*://.+$")
    )]
    pub uri: String,
    /// The formats to write. Default: [safetensors, onnx].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub formats: Option<Vec<OutputFormat>>,
}

/// A format of an exported model.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `model.safetensors`: the fp32 parameters in the layout other frameworks load.
    Safetensors,
    /// `model.onnx`: the whole network, for any ONNX runtime.
    Onnx,
    /// `model.int8.safetensors`: post-training int8 weights and calibrated input scales.
    Int8,
}

impl OutputFormat {
    /// The file this format writes.
    pub const fn file(self) -> &'static str {
        match self {
            OutputFormat::Safetensors => "model.safetensors",
            OutputFormat::Onnx => "model.onnx",
            OutputFormat::Int8 => "model.int8.safetensors",
        }
    }
}

/// The model card every output has.
pub const MODEL_CARD_FILE: &str = "model.json";

impl OutputSpec {
    /// The formats to write.
    pub fn formats_or_default(&self) -> Vec<OutputFormat> {
        self.formats
            .clone()
            .unwrap_or_else(|| vec![OutputFormat::Safetensors, OutputFormat::Onnx])
    }

    /// Every file an output may hold: what a progress report may name.
    pub fn known_files() -> [&'static str; 4] {
        [
            MODEL_CARD_FILE,
            OutputFormat::Safetensors.file(),
            OutputFormat::Onnx.file(),
            OutputFormat::Int8.file(),
        ]
    }
}

/// One written file.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputFile {
    /// Its name under the output URI.
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// Where the trained model went, once written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputStatus {
    /// `spec.output.uri`.
    pub uri: String,
    /// The files under it.
    pub files: Vec<OutputFile>,
    /// The training step the model is from.
    pub step: i64,
}
