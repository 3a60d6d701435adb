//! Writes a built-in video ResNet (`r3d_18`, `mc3_18`, `r2plus1d_18`) with random weights and
//! non-default BatchNorm statistics, a random input and our logits for it, for
//! `scripts/torchvision_video.py check` (PyTorch compatibility of the saved checkpoint:
//! names, shapes, dtypes and the forward pass).
//!
//! `cargo run -p trainer --example video_resnet_reference -- ARCH OUT_DIR`
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "r3d_18".into());
    let out = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| format!("{arch}_reference")));
    std::fs::create_dir_all(&out)?;
    tch::manual_seed(5);
    let spec = models::spec::ArchSpec::by_name(&arch)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = trainer::net::Net::new(&vs.root(), &spec)?;
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("running_mean") {
                t.copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) * 0.4 - 0.2));
            } else if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) * 1.5 + 0.5));
            } else if name.ends_with("num_batches_tracked") {
                t.copy_(&Tensor::from(17i64));
            }
        }
    });
    let x = Tensor::rand([2, 1, 32, 32, 32], (Kind::Float, Device::Cpu));
    let z = tch::no_grad(|| net.forward_t(&x, false));
    vs.save(out.join("weights.safetensors"))?;
    x.write_npy(out.join("input.npy"))?;
    z.write_npy(out.join("logits.npy"))?;
    println!(
        "wrote {}/{{weights.safetensors,input.npy,logits.npy}}; logits {:?}",
        out.display(),
        Vec::<f32>::try_from(&z.flatten(0, -1))?
    );
    Ok(())
}
