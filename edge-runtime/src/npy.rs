//! Writes f32 arrays as NumPy `.npy` (format 1.0), so Python clients can compare embeddings
//! (and feed preprocessed tensors to converters) without a Rust reader.

use std::io::Write;

/// `.npy` bytes of a row-major `rows x cols` f32 array.
pub fn npy_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    npy_f32_shaped(data, &[rows, cols])
}

/// `.npy` bytes of a C-order f32 array of `shape` (at least one dimension).
pub fn npy_f32_shaped(data: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // NumPy writes a one-element tuple as `(n,)`.
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.write_all(&v.to_le_bytes()).expect("Vec write");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let b = npy_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        assert_eq!(&b[10 + hlen..10 + hlen + 4], &1f32.to_le_bytes());
        assert_eq!(b.len(), 10 + hlen + 24);
    }

    #[test]
    fn any_rank() {
        let header = |b: &[u8]| {
            let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
            String::from_utf8(b[10..10 + hlen].to_vec()).unwrap()
        };
        let b = npy_f32_shaped(&[0.0; 24], &[2, 1, 3, 4]);
        assert!(header(&b).contains("'shape': (2, 1, 3, 4)"));
        assert!(header(&npy_f32_shaped(&[0.0; 3], &[3])).contains("'shape': (3,)"));
    }
}
