//! The device layout of quantized weights: each GGUF block split into its quantized
//! values (the payload, a multiple of 16 bytes, so every lane of `matmul_int8.cu` reads
//! them with aligned 128-bit loads) and its scales (the header). A matrix becomes every
//! block's payload, in order, followed by every block's header.

use gguf::GgmlType;
use std::ops::Range;

/// Where the header sits in a block of `ty`, for the formats `matmul_int8.cu` reads.
pub fn header_bytes(ty: GgmlType) -> Option<Range<usize>> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 | Q8_0 => 0..2,
        Q4_1 => 0..4,
        Q5_0 => 0..6,
        Q5_1 => 0..8,
        // d, dmin and the 12 bytes of packed scales and mins.
        Q4_K | Q5_K => 0..16,
        // The 16 scales and d come after the 192 bytes of codes.
        Q6_K => 192..210,
        _ => return None,
    })
}

/// `bytes` (whole GGUF blocks of `ty`) as the payload plane then the header plane.
pub fn split_planes(ty: GgmlType, bytes: &[u8]) -> Option<Vec<u8>> {
    let header = header_bytes(ty)?;
    let block = ty.type_size();
    let (header_len, payload_len) = (header.len(), block - header.len());
    let blocks = bytes.len() / block;
    let mut out = vec![0u8; bytes.len()];
    let (payloads, headers) = out.split_at_mut(blocks * payload_len);
    for ((b, p), h) in bytes
        .chunks_exact(block)
        .zip(payloads.chunks_exact_mut(payload_len))
        .zip(headers.chunks_exact_mut(header_len))
    {
        h.copy_from_slice(&b[header.clone()]);
        if header.start == 0 {
            p.copy_from_slice(&b[header.end..]);
        } else {
            p.copy_from_slice(&b[..header.start]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf::GgmlType::*;

    #[test]
    fn planes_hold_every_byte_once_with_aligned_payloads() {
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K] {
            let header = header_bytes(ty).unwrap();
            let block = ty.type_size();
            let payload = block - header.len();
            assert_eq!(payload % 16, 0, "{}", ty.name());
            assert!(header.start == 0 || header.end == block, "{}", ty.name());
            let bytes: Vec<u8> = (0..3 * block).map(|i| (i * 7 + i / 251) as u8).collect();
            let planes = split_planes(ty, &bytes).unwrap();
            for b in 0..3 {
                let src = &bytes[b * block..(b + 1) * block];
                let h = &planes[3 * payload + b * header.len()..][..header.len()];
                assert_eq!(h, &src[header.clone()], "{}", ty.name());
                let p = &planes[b * payload..(b + 1) * payload];
                let rest: Vec<u8> = src[..header.start]
                    .iter()
                    .chain(&src[header.end..])
                    .copied()
                    .collect();
                assert_eq!(p, &rest[..], "{}", ty.name());
            }
        }
        assert!(split_planes(F16, &[0; 64]).is_none());
    }
}
