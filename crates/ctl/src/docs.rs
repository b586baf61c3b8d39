//! The man page and shell completions, generated from the clap definition at build time
//! (`machinactl-gendoc OUT`, run by debian/rules).

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

use crate::cli::Cli;

/// Write `OUT/machinactl.1` and `OUT/completions/{machinactl.bash,_machinactl,machinactl.fish}`.
pub fn generate(out: &Path) -> std::io::Result<()> {
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(out.join("machinactl.1"), page)?;
    for (shell, file) in
        [(Shell::Bash, "machinactl.bash"), (Shell::Zsh, "_machinactl"), (Shell::Fish, "machinactl.fish")]
    {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "machinactl", &mut buf);
        std::fs::write(completions.join(file), buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_page_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        super::generate(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("machinactl.1")).unwrap();
        assert!(page.contains("machinactl") && page.contains("approve"), "{page}");
        for f in ["machinactl.bash", "_machinactl", "machinactl.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(f)).unwrap();
            assert!(text.contains("watch"), "{f}");
        }
    }
}
