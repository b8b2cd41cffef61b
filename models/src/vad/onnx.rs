//! Just enough protobuf to read the float initializers of an ONNX model
//! (`ModelProto.graph.initializer`), renamed to the safetensors names.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

/// ONNX initializer names of the 16 kHz op15 export -> our names.
const NAMES: [(&str, &str); 15] = [
    ("model.stft.forward_basis_buffer", "stft_conv.weight"),
    ("model.encoder.0.reparam_conv.weight", "conv1.weight"),
    ("model.encoder.0.reparam_conv.bias", "conv1.bias"),
    ("model.encoder.1.reparam_conv.weight", "conv2.weight"),
    ("model.encoder.1.reparam_conv.bias", "conv2.bias"),
    ("model.encoder.2.reparam_conv.weight", "conv3.weight"),
    ("model.encoder.2.reparam_conv.bias", "conv3.bias"),
    ("model.encoder.3.reparam_conv.weight", "conv4.weight"),
    ("model.encoder.3.reparam_conv.bias", "conv4.bias"),
    ("model.decoder.rnn.weight_ih", "lstm_cell.weight_ih"),
    ("model.decoder.rnn.weight_hh", "lstm_cell.weight_hh"),
    ("model.decoder.rnn.bias_ih", "lstm_cell.bias_ih"),
    ("model.decoder.rnn.bias_hh", "lstm_cell.bias_hh"),
    ("model.decoder.decoder.2.weight", "final_conv.weight"),
    ("model.decoder.decoder.2.bias", "final_conv.bias"),
];

/// A protobuf field: number and payload.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.data.split_first().ok_or("truncated varint")?;
            self.data = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.data.len() {
            return Err("truncated field".into());
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn fields(data: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut reader = Reader { data };
    let mut out = Vec::new();
    while let Some(f) = reader.field()? {
        out.push(f);
    }
    Ok(out)
}

/// One `TensorProto` as (name, dims, f32 data).
fn tensor(data: &[u8]) -> Result<(String, Vec<usize>, Vec<f32>), String> {
    let (mut name, mut dims, mut floats, mut raw, mut dtype) =
        (String::new(), Vec::new(), Vec::new(), None, 1);
    for (number, value) in fields(data)? {
        match (number, value) {
            (1, Value::Varint(d)) => dims.push(d as usize),
            (1, Value::Bytes(packed)) => {
                let mut r = Reader { data: packed };
                while !r.data.is_empty() {
                    dims.push(r.varint()? as usize);
                }
            }
            (2, Value::Varint(t)) => dtype = t,
            (4, Value::Fixed32(bits)) => floats.push(f32::from_bits(bits)),
            (4, Value::Bytes(packed)) => floats.extend(
                packed
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            (8, Value::Bytes(n)) => name = String::from_utf8_lossy(n).into_owned(),
            (9, Value::Bytes(bytes)) => raw = Some(bytes),
            _ => {}
        }
    }
    if dtype != 1 {
        return Err(format!(
            "initializer `{name}` is not float32 (type {dtype})"
        ));
    }
    if let Some(bytes) = raw {
        floats = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
    }
    Ok((name, dims, floats))
}

/// The Silero tensors of an ONNX file, under the safetensors names.
pub fn silero_tensors(model: &[u8]) -> Result<HashMap<String, Tensor>, String> {
    let graph = fields(model)?
        .into_iter()
        .find_map(|(n, v)| match (n, v) {
            (7, Value::Bytes(g)) => Some(g),
            _ => None,
        })
        .ok_or("no graph in the ONNX file")?;
    let mut out = HashMap::new();
    for (number, value) in fields(graph)? {
        let (5, Value::Bytes(t)) = (number, value) else {
            continue;
        };
        let (name, dims, data) = tensor(t)?;
        let Some((_, ours)) = NAMES.iter().find(|(onnx, _)| *onnx == name) else {
            continue;
        };
        if dims.iter().product::<usize>() != data.len() {
            return Err(format!(
                "initializer `{name}`: shape {dims:?} but {} values",
                data.len()
            ));
        }
        let t = Tensor::from_vec(data, dims, &Device::Cpu).map_err(|e| e.to_string())?;
        out.insert(ours.to_string(), t);
    }
    if out.len() != NAMES.len() {
        return Err(format!(
            "found {} of the {} Silero tensors; use the wheel's silero_vad_16k_op15.onnx",
            out.len(),
            NAMES.len()
        ));
    }
    Ok(out)
}
