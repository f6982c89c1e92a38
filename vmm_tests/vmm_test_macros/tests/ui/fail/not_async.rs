use petri::PetriVmBuilder;
use petri::openvmm::OpenVmmPetriBackend;
use vmm_test_macros::vmm_test;

#[vmm_test(openvmm_uefi_x64(none))]
fn boot(_config: PetriVmBuilder<OpenVmmPetriBackend>) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
