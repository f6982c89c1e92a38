use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_macros::vmm_test;

#[vmm_test(qemu_uefi_x64(vhd(petri_test_guest_x64)))]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let _vm = config.run().await?;
    Ok(())
}

fn main() {}
