"""The YAML configs of the entry points, shipped inside the package (Hydra reads them as
package resources when nmt is installed; the top-level ``configs/`` links here)."""
