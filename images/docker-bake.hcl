# docker buildx bake -f images/docker-bake.hcl   (run from the repository root; see build.sh)
variable "VERSION" { default = "dev" }
variable "REGISTRY" { default = "ghcr.io/spa-dev" }

group "default" { targets = ["operator", "worker", "trainer"] }

target "_common" {
  context    = "."
  dockerfile = "images/Dockerfile"
  args       = { VERSION = VERSION }
  platforms  = ["linux/amd64"]
}

target "operator" {
  inherits = ["_common"]
  target   = "operator"
  tags     = ["${REGISTRY}/spa-operator:${VERSION}"]
}

target "worker" {
  inherits = ["_common"]
  target   = "worker"
  tags     = ["${REGISTRY}/spa-worker:${VERSION}"]
}

target "trainer" {
  inherits = ["_common"]
  target   = "trainer"
  tags     = ["${REGISTRY}/spa-trainer:${VERSION}"]
}
