pub fn run(_a: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {}
