//! GPU kernel benchmarks (run by the GPU check script): device copy bandwidth, the gemv kernels'
//! effective bandwidth on large matrices, and decode attention with an int8 against an f16 KV
//! cache. Prints one JSON object per line.

use edgellm_core::model::Matrix;
use edgellm_cuda::testing::{self, AttnShape};
use edgellm_cuda::{Gpu, KvCache};
use edgellm_kernels::GgmlType;

fn main() {
    let gpu = match Gpu::open() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::exit(1);
        }
    };
    println!("{{\"device\": \"{}\"}}", gpu.describe());
    let copy = testing::copy_bandwidth(&gpu, 1 << 30, 20).expect("copy");
    println!("{{\"bench\": \"d2d_copy\", \"gbps\": {:.1}}}", copy / 1e9);
    for (ty, rows, cols) in [
        (GgmlType::T2, 8192, 8192),
        (GgmlType::T2, 16384, 16384),
        (GgmlType::Q4_0, 8192, 8192),
        (GgmlType::Q8_0, 8192, 8192),
    ] {
        let row_bytes = cols / ty.block_len() * ty.block_bytes();
        let mut data = vec![0x55u8; rows * row_bytes];
        if ty != GgmlType::T2 {
            for b in data.chunks_exact_mut(ty.block_bytes()) {
                b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            }
        }
        let rs: Vec<u8> = (0..rows).flat_map(|_| 0.5f32.to_le_bytes()).collect();
        let w = Matrix {
            name: "w",
            ty,
            rows,
            cols,
            data: &data,
            row_scale: (ty == GgmlType::T2).then_some(&rs[..]),
        };
        // Enough copies to exceed the L2 cache (at least 256 MiB in all).
        let copies = (256usize << 20).div_ceil(data.len()).max(2);
        // What a kernel that only reads gets from a buffer of the matrix's size, launched the
        // same way: the ceiling any gemv of this size can reach.
        let read = testing::read_bandwidth(&gpu, data.len(), copies, 400).expect("read");
        println!(
            "{{\"bench\": \"stream_read\", \"bytes\": {}, \"gbps\": {:.1}, \"of_copy\": {:.3}}}",
            data.len(),
            read / 1e9,
            read / copy
        );
        // In one CUDA graph, launched one after another and overlapped, as the decode step
        // launches them.
        for overlapped in [false, true] {
            let Some(bw) =
                testing::gemv_bandwidth(&gpu, &w, copies, 400, overlapped).expect("gemv")
            else {
                continue;
            };
            println!(
                "{{\"bench\": \"gemv\", \"type\": \"{}\", \"rows\": {rows}, \"cols\": {cols}, \"overlapped\": {overlapped}, \"gbps\": {:.1}, \"of_copy\": {:.3}, \"of_read\": {:.3}}}",
                ty.name(),
                bw / 1e9,
                bw / copy,
                bw / read
            );
        }
    }
    // What a kernel boundary costs in a graph of 150 (a SmolLM2 decode step has 153).
    for blocks in [1, 132, 528] {
        let serial = testing::kernel_boundary(&gpu, 150, blocks, false, 50).expect("boundary");
        let overlapped = testing::kernel_boundary(&gpu, 150, blocks, true, 50).expect("boundary");
        println!(
            "{{\"bench\": \"kernel_boundary\", \"blocks\": {blocks}, \"serial_us\": {:.2}, \"overlapped_us\": {}}}",
            serial.unwrap_or(f64::NAN) * 1e6,
            overlapped.map_or("null".to_string(), |s| format!("{:.2}", s * 1e6))
        );
    }
    let smol = AttnShape {
        n_heads: 9,
        n_kv: 3,
        head_dim: 64,
        context: 0,
        theta: 100000.0,
        halves: false,
    };
    for ctx in [128, 512, 2048, 8192] {
        let f16 = testing::attention_time(&gpu, smol, KvCache::F16, ctx, 2000).expect("attention");
        let i8 = testing::attention_time(&gpu, smol, KvCache::Int8, ctx, 2000).expect("attention");
        println!(
            "{{\"bench\": \"attention\", \"heads\": \"9q/3kv x 64\", \"ctx\": {ctx}, \"f16_us\": {:.2}, \"int8_us\": {:.2}, \"int8_speedup\": {:.2}}}",
            f16 * 1e6,
            i8 * 1e6,
            f16 / i8
        );
    }
}
