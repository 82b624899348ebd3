//! The IDX format of (Fashion-)MNIST: a 4-byte magic (0, 0, type, rank), `rank` big-endian
//! u32 dimensions, then the data. Files may be gzip-compressed.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::DataError;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const UBYTE: u8 = 0x08;

/// Reads an IDX file of unsigned bytes, gunzipping it when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(path, e))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: 4,
            got: bytes.len(),
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4 {
        return Err(DataError::BadMagic {
            path: path.into(),
            magic,
        });
    }
    if magic[2] != UBYTE {
        return Err(DataError::UnsupportedIdxType {
            path: path.into(),
            code: magic[2],
        });
    }
    let rank = magic[3] as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.into(),
            expected: header,
            got: bytes.len(),
        });
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::BadShape {
            path: path.into(),
            detail: format!("dimensions {dims:?} overflow"),
        })?;
    let got = bytes.len() - header;
    if got < expected {
        return Err(DataError::Truncated {
            path: path.into(),
            expected,
            got,
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..header + expected].to_vec(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    /// An IDX file of `dims` with the given bytes, gzipped or not.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8], gz: bool) -> Vec<u8> {
        let mut b = vec![0, 0, UBYTE, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        if gz {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(&b).unwrap();
            e.finish().unwrap()
        } else {
            b
        }
    }

    #[test]
    fn reads_plain_and_gzipped_files() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..24).collect();
        for gz in [false, true] {
            let p = dir.path().join(format!("x{gz}.idx"));
            std::fs::write(&p, idx_bytes(&[2, 3, 4], &data, gz)).unwrap();
            let a = read_idx(&p).unwrap();
            assert_eq!(a.dims, vec![2, 3, 4]);
            assert_eq!(a.data, data);
        }
    }

    #[test]
    fn corrupt_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.idx");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0], "truncated"),
            (vec![1, 2, 3, 4, 5], "not an IDX file"),
            (
                vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                "not unsigned bytes",
            ),
            (
                idx_bytes(&[10, 10], &[0; 50], false),
                "promises 100 bytes of data but 50",
            ),
            (idx_bytes(&[3], &[1, 2, 3], true)[..12].to_vec(), "bad.idx"),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, bytes).unwrap();
            let msg = read_idx(&p).unwrap_err().to_string();
            assert!(msg.contains("bad.idx"), "{msg}");
            assert!(msg.contains(want), "{msg} should mention {want}");
        }
        let missing = read_idx(&dir.path().join("missing.idx"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.idx"), "{missing}");
    }
}
