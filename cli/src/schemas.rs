//! `surge schemas`: writes the JSON Schema of every event type and version to `schema/events/`.

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct SchemasConfig {
    /// Directory the schemas are written to.
    #[arg(long, default_value = "schema/events")]
    pub out: PathBuf,
}

pub fn run(config: SchemasConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.out)?;
    for (name, schema) in surge_events::schemas::event_schemas() {
        let path = config.out.join(&name);
        std::fs::write(&path, surge_events::schemas::file_text(&schema))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
