//! PEFT LoRA adapters: `adapter_config.json` (r, lora_alpha, target_modules, use_rslora) and
//! `adapter_model.safetensors` (`<module>.lora_A.weight` [r, in], `<module>.lora_B.weight`
//! [out, r]), merged into the base weights as `W' = W + (alpha / r) · B · A` (alpha / sqrt(r)
//! with rsLoRA) in Hugging Face row order, before quantization.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::source::{permute_rows, safetensors_to_f32, Permute, Source, SrcTensor};

#[derive(Deserialize, Debug)]
struct AdapterConfig {
    r: Option<u64>,
    lora_alpha: Option<f64>,
    target_modules: Option<serde_json::Value>,
    use_rslora: Option<bool>,
}

/// An adapter directory with its safetensors file mapped.
pub struct AdapterDir {
    path: PathBuf,
    config: AdapterConfig,
    map: Mmap,
}

/// One adapted module: its low-rank factors as f32.
struct Pair {
    /// `[r, in]`, row-major.
    a: Vec<f32>,
    /// `[out, r]`, row-major.
    b: Vec<f32>,
}

/// The A and B factors of one module, as they are found.
type Halves = (Option<Vec<f32>>, Option<Vec<f32>>);

/// A parsed adapter, checked against the model it is merged into.
pub struct Adapter {
    rank: usize,
    scale: f32,
    /// Hugging Face module name (e.g. `model.layers.0.self_attn.q_proj`) → factors.
    pairs: BTreeMap<String, Pair>,
}

impl AdapterDir {
    pub fn open(dir: &Path) -> Result<AdapterDir> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let config: AdapterConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid adapter config", cfg_path.display()))?;
        let path = dir.join("adapter_model.safetensors");
        if !path.exists() {
            bail!(
                "{} is missing (adapters saved as adapter_model.bin are not supported: save \
                 with safe_serialization=True)",
                path.display()
            );
        }
        let map = super::map_file(&path)?;
        Ok(AdapterDir { path, config, map })
    }

    /// Reads every factor pair and checks it against `src`'s tensors.
    pub fn adapter(&self, src: &Source<'_>) -> Result<Adapter> {
        let c = &self.config;
        let rank =
            c.r.filter(|&r| r > 0)
                .context("adapter_config.json: missing or zero `r` (the LoRA rank)")?
                as usize;
        let alpha = c
            .lora_alpha
            .context("adapter_config.json: missing `lora_alpha`")?;
        let scale = if c.use_rslora.unwrap_or(false) {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        } as f32;
        let targets: Option<Vec<String>> = match &c.target_modules {
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            // A regular expression or "all-linear": every module with factors is merged.
            _ => None,
        };
        let st = SafeTensors::deserialize(&self.map).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", self.path.display())
        })?;
        let mut halves: BTreeMap<String, Halves> = BTreeMap::new();
        for (name, view) in st.tensors() {
            let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                bail!(
                    "adapter tensor {name} is not a LoRA factor (lora_A / lora_B): only plain \
                     LoRA adapters can be merged"
                );
            };
            let module = module.strip_prefix("base_model.model.").unwrap_or(module);
            let base = src
                .tensors
                .iter()
                .find(|t| t.hf_module.as_deref() == Some(module) && t.name.ends_with(".weight"))
                .with_context(|| {
                    format!("adapter tensor {name}: the model has no module {module}")
                })?;
            if let Some(t) = &targets {
                let last = module.rsplit('.').next().unwrap_or(module);
                if !t.iter().any(|x| x == last || x == module) {
                    bail!(
                        "adapter tensor {name}: {last} is not in adapter_config.json's \
                         target_modules {t:?}"
                    );
                }
            }
            let (rows, cols) = (base.dims[1] as usize, base.dims[0] as usize);
            let shape = view.shape().to_vec();
            let want = if which == 0 {
                [rank, cols]
            } else {
                [rows, rank]
            };
            if shape.len() != 2 || shape[1 - which] != want[1 - which] {
                bail!(
                    "adapter tensor {name} has shape {shape:?}, expected {want:?} for {} \
                     ({rows} × {cols}) at rank {rank}: the module's size does not match the model",
                    base.name
                );
            }
            if shape != want {
                bail!(
                    "adapter tensor {name} has shape {shape:?}, expected {want:?}: bad LoRA rank \
                     (adapter_config.json says r = {rank})"
                );
            }
            let mut v = vec![0f32; rank * if which == 0 { cols } else { rows }];
            safetensors_to_f32(view.dtype(), view.data(), &mut v)
                .with_context(|| format!("adapter tensor {name}"))?;
            let slot = halves.entry(module.to_string()).or_default();
            if which == 0 {
                slot.0 = Some(v);
            } else {
                slot.1 = Some(v);
            }
        }
        let mut pairs = BTreeMap::new();
        for (module, (a, b)) in halves {
            match (a, b) {
                (Some(a), Some(b)) => {
                    pairs.insert(module, Pair { a, b });
                }
                (a, _) => bail!(
                    "adapter module {module} has lora_{} but no lora_{}",
                    if a.is_some() { "A" } else { "B" },
                    if a.is_some() { "B" } else { "A" }
                ),
            }
        }
        if pairs.is_empty() {
            bail!("{} holds no LoRA factors", self.path.display());
        }
        Ok(Adapter { rank, scale, pairs })
    }
}

impl Adapter {
    /// Number of adapted modules.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the adapter has factors for the source tensor `t`.
    pub fn targets(&self, t: &SrcTensor<'_>) -> bool {
        self.pair(t).is_some()
    }

    fn pair(&self, t: &SrcTensor<'_>) -> Option<&Pair> {
        if !t.name.ends_with(".weight") {
            return None;
        }
        t.hf_module.as_ref().and_then(|m| self.pairs.get(m))
    }

    /// Adds `scale · B · A` to `values` (the source tensor `t`, in its own row order) if the
    /// adapter has factors for it.
    pub fn merge(&self, t: &SrcTensor<'_>, values: &mut [f32]) -> Result<()> {
        let Some(p) = self.pair(t) else {
            return Ok(());
        };
        let (rows, cols, r) = (t.dims[1] as usize, t.dims[0] as usize, self.rank);
        let mut delta = vec![0f32; rows * cols];
        for (o, drow) in delta.chunks_exact_mut(cols).enumerate() {
            for k in 0..r {
                let bk = self.scale * p.b[o * r + k];
                for (d, &a) in drow.iter_mut().zip(&p.a[k * cols..(k + 1) * cols]) {
                    *d += bk * a;
                }
            }
        }
        if let Permute::AlreadyGguf(heads) = t.permute {
            delta = permute_rows(&delta, cols, heads);
        }
        for (v, d) in values.iter_mut().zip(&delta) {
            *v += d;
        }
        Ok(())
    }
}
