//! Host-side tensors: what pre-processing hands to the ONNX sessions (and to `.npz` files).
//!
//! A [`HostTensor`] is a shape plus one typed buffer. Floating inputs are produced in `f32` and
//! converted once to the element type the session declares ([`FloatDtype`]) with ORT-GenAI's
//! own CPU conversions (`FastFloat32ToFloat16`, `Float32ToBFloat16`): fp16 rounds to nearest
//! with ties away from zero, bf16 truncates. IEEE round-to-nearest-even would differ from the
//! reference in one value out of ~10⁵ (a tie), by one half-precision step.

use half::{bf16, f16};

/// Element types of the float inputs a session may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloatDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for FloatDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(FloatDtype::F32),
            "f16" | "fp16" | "float16" => Ok(FloatDtype::F16),
            "bf16" | "bfloat16" => Ok(FloatDtype::BF16),
            other => Err(format!(
                "unknown float type {other:?} (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Short element type name (numpy-style) for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "float32",
            TensorData::F16(_) => "float16",
            TensorData::BF16(_) => "bfloat16",
            TensorData::I64(_) => "int64",
            TensorData::I32(_) => "int32",
            TensorData::Bool(_) => "bool",
        }
    }

    /// Every element widened to `f64` (for comparisons and reports).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::F16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::BF16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        }
    }
}

/// A shape and its elements, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    /// A tensor from parts; the element count must match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Self {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        HostTensor { shape, data }
    }

    /// Float elements stored as `dtype`, converted as ORT-GenAI converts them.
    pub fn float(shape: Vec<usize>, values: Vec<f32>, dtype: FloatDtype) -> Self {
        let data = match dtype {
            FloatDtype::F32 => TensorData::F32(values),
            FloatDtype::F16 => TensorData::F16(values.iter().map(|&v| f32_to_f16(v)).collect()),
            FloatDtype::BF16 => TensorData::BF16(values.iter().map(|&v| f32_to_bf16(v)).collect()),
        };
        HostTensor::new(shape, data)
    }

    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        HostTensor::new(shape, TensorData::I64(values))
    }

    pub fn bool(shape: Vec<usize>, values: Vec<bool>) -> Self {
        HostTensor::new(shape, TensorData::Bool(values))
    }
}

/// `f32` → `f16` as ORT-GenAI's CPU cast does: add half an output step to the bits and
/// truncate (ties round away from zero), flush below the smallest subnormal, saturate overflow.
pub fn f32_to_f16(v: f32) -> f16 {
    let b = v.to_bits().wrapping_add(0x1000);
    let e = (b & 0x7F80_0000) >> 23;
    let m = b & 0x007F_FFFF;
    let mut h = (b & 0x8000_0000) >> 16;
    if e > 112 {
        h |= ((e.wrapping_sub(112) << 10) & 0x7C00) | (m >> 13);
    }
    if e < 113 && e > 101 {
        h |= (((0x007F_F000 + m) >> (125 - e)) + 1) >> 1;
    }
    if e > 143 {
        h |= 0x7FFF;
    }
    f16::from_bits(h as u16)
}

/// `f32` → `bf16` as ORT-GenAI's CPU cast does: the high 16 bits (truncation).
pub fn f32_to_bf16(v: f32) -> bf16 {
    bf16::from_bits((v.to_bits() >> 16) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_conversion_follows_ortgenai() {
        let t = HostTensor::float(vec![3], vec![1.0, 0.1, -2.5], FloatDtype::F16);
        assert_eq!(
            t.data.to_f64(),
            vec![1.0, f64::from(f16::from_f32(0.1)), -2.5]
        );
        // A tie (low 13 bits exactly 0x1000) rounds away from zero, unlike IEEE's to-even:
        // -0.04298401 (seen in a reference run) becomes -0.043, not -0.04297.
        let tie = f32::from_bits(0xBD30_1000);
        assert_eq!(f32_to_f16(tie).to_bits(), f16::from_f32(tie).to_bits() + 1);
        // Away from ties both agree; subnormals and zero too.
        for v in [0.333f32, -7.25, 65504.0, 1e-6, -3e-7, 0.0, -0.0] {
            assert_eq!(f32_to_f16(v).to_bits(), f16::from_f32(v).to_bits(), "{v}");
        }
        // bf16 truncates: 0.1 = 0x3DCCCCCD → 0x3DCC (round-to-nearest gives 0x3DCD).
        let t = HostTensor::float(vec![1, 1], vec![0.1], FloatDtype::BF16);
        assert_eq!(t.data, TensorData::BF16(vec![bf16::from_bits(0x3DCC)]));
        assert_eq!("bf16".parse::<FloatDtype>(), Ok(FloatDtype::BF16));
        assert!("f64".parse::<FloatDtype>().is_err());
    }
}
