//! Opening a model file: memory-map it, parse and check it, pick the kernels, build the tokenizer.

use anyhow::{bail, Context, Result};
use edgellm_core::gguf::{Gguf, Value};
use edgellm_core::model::{Model, Relayout};
use edgellm_core::tokenizer::Tokenizer;
use edgellm_kernels::{CpuFeatures, Kernels, Tier};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// A model file's bytes: the file memory-mapped, or read into memory ([`open_model`] chooses).
pub struct ModelFile {
    map: Mmap,
    in_memory: bool,
    relaid: usize,
}

/// Opens the model file at `path`; a directory is an error that says what to do with it.
fn open_file(path: &Path) -> Result<File> {
    if path.is_dir() {
        if path.join("config.json").exists() {
            bail!(
                "{} is a Hugging Face model directory: convert it into a model image first \
                 (edgellm convert {} -o model.gguf --format q8), then give that file",
                path.display(),
                path.display()
            );
        }
        bail!("{} is a directory, not a GGUF model file", path.display());
    }
    File::open(path).with_context(|| format!("cannot open model {}", path.display()))
}

impl ModelFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let file = open_file(path)?;
        // SAFETY: the map is read-only and private to this process; the file is not expected to be
        // truncated or rewritten while the program runs (the same contract every mmap-based model
        // loader has). Every byte is validated by the GGUF parser before use.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        Ok(ModelFile {
            map,
            in_memory: false,
            relaid: 0,
        })
    }

    /// Reads `path` into anonymous memory that asks for transparent huge pages
    /// (`MADV_HUGEPAGE`), then makes it read-only and lets the page cache drop the file. The
    /// kernels then walk the weights with far fewer TLB misses than through the file's 4 KiB
    /// pages (file-backed huge pages need a kernel option most systems lack); the cost is reading
    /// the whole file at start, and memory that the page cache cannot share with other
    /// processes. Where huge pages are not available the memory is in normal pages.
    ///
    /// With `kernels`, the tensors those kernels multiply faster in another layout of the same
    /// numbers are rewritten in it before the memory is made read-only
    /// ([`edgellm_core::model::Relayout`]; TQ2_0 and TQ1_0 as TQ2W on the `avx2` tier). A
    /// layout of the same size (TQ2_0's) is made in place; a larger one (TQ1_0's: 66 bytes for
    /// every 54) is written from a map of the file into memory of the new size, letting each
    /// piece of the map go once read, so the process never holds both copies whole.
    pub fn read(path: &Path, kernels: Option<&Kernels>) -> Result<ModelFile> {
        use std::io::Read;
        let mut file = open_file(path)?;
        if let Some(k) = kernels {
            // SAFETY: as in `open`.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot memory-map {}", path.display()))?;
            if let Some(plan) = Relayout::plan(&map, k).filter(|p| !p.in_place()) {
                return Self::read_relaid(path, &file, &map, &plan);
            }
        }
        let len = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let len = usize::try_from(len).context("the model file is too large for memory")?;
        if len == 0 {
            bail!("{} is empty", path.display());
        }
        let mut buf = memmap2::MmapMut::map_anon(len)
            .with_context(|| format!("cannot allocate {len} bytes for the model"))?;
        // Advice only: without transparent huge pages the buffer keeps normal pages.
        let _ = edgellm_hal::memory::advise_huge_pages(&mut buf);
        file.read_exact(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // The file's pages in the page cache are a second copy; let the kernel drop them.
        let _ = edgellm_hal::memory::drop_file_cache(&file);
        let relaid = kernels.map_or(0, |k| edgellm_core::model::relayout_weights(&mut buf, k));
        let map = buf
            .make_read_only()
            .context("cannot make the model's memory read-only")?;
        Ok(ModelFile {
            map,
            in_memory: true,
            relaid,
        })
    }

    /// The bytes [`Self::read`] with `kernels` would hold when its relayout grows the file
    /// (TQ1_0 as TQ2W), or `None` when it does not (or the file cannot be mapped or parsed: the
    /// read reports that).
    pub fn read_len(path: &Path, kernels: &Kernels) -> Option<u64> {
        let file = File::open(path).ok()?;
        // SAFETY: as in `open`.
        let map = unsafe { Mmap::map(&file) }.ok()?;
        let plan = Relayout::plan(&map, kernels)?;
        (!plan.in_place()).then_some(plan.output_len() as u64)
    }

    /// [`Self::read`] for a `plan` that moves tensors: the file `map`ped, rewritten into memory
    /// that asks for huge pages.
    fn read_relaid(path: &Path, file: &File, map: &Mmap, plan: &Relayout) -> Result<ModelFile> {
        let len = plan.output_len();
        let mut buf = memmap2::MmapMut::map_anon(len)
            .with_context(|| format!("cannot allocate {len} bytes for the model"))?;
        let _ = edgellm_hal::memory::advise_huge_pages(&mut buf);
        let page = edgellm_hal::memory::page_size();
        let mut released = 0;
        plan.write(map, &mut buf, |read| {
            let end = read.end / page * page;
            if end > released {
                // SAFETY: the map is private, read-only and never written, and `plan.write`
                // reads no byte below `read.end` again: after MADV_DONTNEED a read would fault
                // in the file's same bytes. It only takes the pages out of this process's memory.
                // A failure (locked memory) leaves them in place.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        released,
                        end - released,
                    )
                };
                released = end;
            }
        });
        let _ = edgellm_hal::memory::drop_file_cache(file);
        let map = buf.make_read_only().with_context(|| {
            format!(
                "cannot make the model's memory read-only ({})",
                path.display()
            )
        })?;
        Ok(ModelFile {
            map,
            in_memory: true,
            relaid: plan.tensors(),
        })
    }

    /// [`Self::read`] when `in_memory`, else [`Self::open`].
    pub fn load(path: &Path, in_memory: bool, kernels: Option<&Kernels>) -> Result<ModelFile> {
        if in_memory {
            Self::read(path, kernels)
        } else {
            Self::open(path)
        }
    }

    /// How many tensors [`Self::read`] rewrote in a faster layout.
    pub fn relaid(&self) -> usize {
        self.relaid
    }

    /// `read into memory`, with the tensors rewritten in a faster layout if any, or `mapped`.
    pub fn describe(&self) -> String {
        match (self.in_memory, self.relaid) {
            (false, _) => "mapped".to_string(),
            (true, 0) => "read into memory".to_string(),
            (true, n) => format!("read into memory; {n} tensors laid out as TQ2W"),
        }
    }

    /// Whether the file was read into memory ([`Self::read`]) rather than mapped.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// Bytes of the file.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Parses the file as GGUF.
    pub fn gguf(&self) -> Result<Gguf<'_>> {
        Gguf::parse(&self.map).map_err(|e| anyhow::anyhow!("not a valid GGUF file: {e}"))
    }
}

/// Opens the model of `args`: read into memory or mapped, as [`crate::rt::model_in_memory`]
/// decides from the flags and the board. A file larger than the board's budget or the memory
/// the machine has available is mapped even then: reading it would exhaust memory before the
/// budget check (`budget::check`) could refuse it and say what would fit (so is one whose
/// relayout would grow it past them, [`ModelFile::read_len`]). Read into memory for the
/// CPU (any `--device` but `cuda`), the tensors that the kernels of `args` multiply faster in
/// another layout are rewritten in it ([`ModelFile::read`]).
pub fn open_model(args: &crate::ModelArgs) -> Result<ModelFile> {
    let board = args.board()?;
    // A bad tier name is reported where the kernels are chosen for the run.
    let kernels = (args.device != "cuda")
        .then(|| kernels(args.kernels.as_deref()).ok())
        .flatten();
    let mut in_memory = crate::rt::model_in_memory(args, &board);
    if in_memory {
        let len = std::fs::metadata(&args.model).map_or(0, |m| m.len());
        let limit = match edgellm_hal::memory::available_memory_bytes() {
            Ok(a) => a.min(board.memory_budget_bytes),
            Err(_) => board.memory_budget_bytes,
        };
        in_memory = len <= limit
            && kernels
                .as_ref()
                .is_none_or(|k| ModelFile::read_len(&args.model, k).is_none_or(|n| n <= limit));
    }
    ModelFile::load(&args.model, in_memory, kernels.as_ref())
}

/// Chooses the kernel set: `forced` (flag), else `EDGELLM_KERNELS`, else the best the CPU has.
pub fn kernels(forced: Option<&str>) -> Result<Kernels> {
    let env = std::env::var("EDGELLM_KERNELS").ok();
    let choice = forced.map(str::to_string).or(env.filter(|s| !s.is_empty()));
    let k = match choice {
        None => Kernels::detect(),
        Some(name) => {
            let tier: Tier = name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            Kernels::with_tier(tier, &CpuFeatures::detect()).map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    Ok(k)
}

/// A model ready to run: its parsed file, weights and tokenizer.
pub struct Loaded<'a> {
    pub gguf: Gguf<'a>,
    pub model: Model<'a>,
    pub tokenizer: Tokenizer,
}

impl<'a> Loaded<'a> {
    /// Builds the model and tokenizer from a parsed file.
    pub fn new(gguf: Gguf<'a>, kernels: &Kernels) -> Result<Loaded<'a>> {
        let model = Model::from_gguf(&gguf, kernels).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| anyhow::anyhow!("{e}"))?;
        if tokenizer.vocab_size() != model.config.vocab_size {
            bail!(
                "the tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                model.config.vocab_size
            );
        }
        Ok(Loaded {
            gguf,
            model,
            tokenizer,
        })
    }

    /// The chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<&'a str> {
        self.gguf.get_str("tokenizer.chat_template")
    }
}

fn value_str(v: &Value<'_>, full: bool) -> String {
    match v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
        Value::Str(s) => {
            let s = if !full && s.chars().count() > 120 {
                format!("{}…", s.chars().take(120).collect::<String>())
            } else {
                s.to_string()
            };
            format!("{s:?}")
        }
        Value::Array(a) => {
            let shown = if full { a.len() } else { a.len().min(8) };
            let items: Vec<String> = a.iter().take(shown).map(|v| value_str(&v, full)).collect();
            let more = if shown < a.len() { ", …" } else { "" };
            format!(
                "[{}{more}] ({} × {:?})",
                items.join(", "),
                a.len(),
                a.elem_type()
            )
        }
    }
}

/// `edgellm inspect`: metadata and the tensor table.
pub fn inspect(path: &Path, full: bool) -> Result<()> {
    let file = ModelFile::open(path)?;
    let g = file.gguf()?;
    println!("file: {}", path.display());
    println!(
        "format: GGUF v{}, alignment {}, data at byte {}",
        g.version, g.alignment, g.data_offset
    );
    println!("image: {}", edgellm::convert::image_status(&g));
    println!("\nmetadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        println!("  {k} = {}", value_str(v, full));
    }
    println!("\ntensors ({}):", g.tensors().len());
    println!(
        "  {:<40} {:<8} {:<22} {:>12}",
        "name", "type", "shape", "bytes"
    );
    let mut total = 0usize;
    let mut by_type = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for t in g.tensors() {
        let dims: Vec<String> = t.dims[..t.n_dims].iter().map(|d| d.to_string()).collect();
        println!(
            "  {:<40} {:<8} {:<22} {:>12}",
            t.name,
            t.ty.name(),
            format!("[{}]", dims.join(", ")),
            t.data.len()
        );
        total += t.data.len();
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.data.len();
    }
    println!(
        "\ntotal: {} tensors, {:.1} MiB",
        g.tensors().len(),
        total as f64 / (1 << 20) as f64
    );
    for (ty, (n, bytes)) in by_type {
        println!(
            "  {ty:<8} {n:>5} tensors {:>10.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    let k = kernels(None)?;
    match Loaded::new(g, &k) {
        Ok(l) => {
            let c = &l.model.config;
            println!(
                "\nmodel: {} ({} layers, dim {}, {} heads / {} kv heads, head dim {}, ffn {}, vocab {}, trained context {}, rope theta {}, {} output)",
                c.arch.name(), c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim,
                c.vocab_size, c.train_context, c.rope_theta,
                if l.model.tied_output { "tied" } else { "separate" }
            );
        }
        Err(e) => println!("\nmodel: cannot be run by this build: {e:#}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_read_into_memory_holds_the_files_bytes() {
        let dir = std::env::temp_dir().join(format!("edgellm-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.bin");
        // Larger than one huge page, and not a multiple of any page size.
        let bytes: Vec<u8> = (0..(5usize << 20) + 123)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let mapped = ModelFile::open(&path).unwrap();
        let read = ModelFile::load(&path, true, None).unwrap();
        assert_eq!(read.len(), bytes.len() as u64);
        assert!(read.map[..] == bytes[..] && mapped.map[..] == bytes[..]);
        std::fs::write(&path, b"").unwrap();
        let e = ModelFile::read(&path, None)
            .err()
            .expect("an empty file is refused");
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file with TQ1_0 tensors read for the `avx2` kernels comes back larger, its TQ1_0
    /// tensors as TQ2W holding the same values and the other tensors' bytes unchanged; read
    /// without kernels, or mapped, it is the file.
    #[test]
    fn a_tq1_0_model_read_for_avx2_holds_tq2w() {
        use edgellm::convert::writer::{GgufWriter, TensorSpec};
        use edgellm_kernels::GgmlType;
        let f = CpuFeatures::detect();
        let Ok(k) = Kernels::with_tier(Tier::Avx2, &f) else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("edgellm-load-tq1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        let tensors = [
            ("t", vec![256, 3], GgmlType::TQ1_0, 3 * 54),
            ("f", vec![5], GgmlType::F32, 20),
            ("u", vec![512], GgmlType::TQ1_0, 2 * 54),
        ];
        let mut w = GgufWriter::new();
        for (name, dims, ty, size) in &tensors {
            w.add_tensor(TensorSpec {
                name: name.to_string(),
                dims: dims.clone(),
                type_id: ty.id(),
                size: *size,
            })
            .unwrap();
        }
        let data = |i: usize, n: u64| (0..n).map(|j| (j as usize * 7 + i * 13) as u8).collect();
        w.write(&path, |i, t| Ok(data(i, t.size)), |_, _| {})
            .unwrap();
        let read = ModelFile::read(&path, Some(&k)).unwrap();
        let plain = ModelFile::read(&path, None).unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!((read.relaid(), plain.relaid()), (2, 0));
        assert_eq!(plain.len(), file_len);
        assert!(read.len() > file_len);
        assert!(read.describe().contains("2 tensors laid out as TQ2W"));
        let (g, old) = (read.gguf().unwrap(), plain.gguf().unwrap());
        for (t, o) in g.tensors().iter().zip(old.tensors()) {
            if o.ty == GgmlType::TQ1_0 {
                assert_eq!(t.ty, GgmlType::TQ2W);
                let n = o.data.len() / 54 * 256;
                let (mut a, mut b) = (vec![0f32; n], vec![f32::NAN; n]);
                edgellm_kernels::scalar::ternary::dequantize_tq1_0(o.data, &mut a);
                edgellm_kernels::scalar::ternary::dequantize_tq2w(t.data, &mut b);
                assert_eq!(a, b, "{}", t.name);
            } else {
                assert_eq!((t.ty, t.data), (o.ty, o.data));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_model_larger_than_the_budget_is_mapped_for_the_check_to_refuse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            m: crate::ModelArgs,
        }
        let dir = std::env::temp_dir().join(format!("edgellm-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (small, large) = (dir.join("small.bin"), dir.join("large.bin"));
        std::fs::write(&small, [1u8; 4096]).unwrap();
        // A sparse file past the Pi Zero 2 W's budget: no disk and no memory spent.
        let f = File::create(&large).unwrap();
        f.set_len(
            crate::boards::by_name("pi-zero-2w")
                .unwrap()
                .memory_budget_bytes
                + 1,
        )
        .unwrap();
        let open = |path: &Path| {
            let p = path.to_str().unwrap();
            let a =
                T::try_parse_from(["t", "-m", p, "--board", "pi-zero-2w", "--no-mmap"]).unwrap();
            open_model(&a.m).unwrap()
        };
        assert!(open(&small).in_memory());
        assert!(
            !open(&large).in_memory(),
            "mapped, so that the budget check can refuse it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
