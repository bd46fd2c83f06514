/* The idle floor for bench/create.py: the least a VMM can be (a Firecracker-like
 * minimum). It creates a bare KVM VM with MEM_MIB of RAM (argv[1], default 32) and one
 * vCPU, whose real-mode code writes one byte to port 0xe9 (relayed to stdout: the "first
 * console byte") and then halts with interrupts off, which the in-kernel irqchip keeps
 * asleep inside KVM_RUN for ever: an idle VM. Built by bench/create.py with gcc. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    size_t mem = (size_t)(argc > 1 ? atol(argv[1]) : 32) << 20;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    void *ram = mmap(NULL, mem, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region r = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem,
        .userspace_addr = (unsigned long)ram};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
    /* mov al,'!'; out 0xe9,al; cli; hlt; jmp $-1 */
    static const unsigned char code[] = {0xb0, '!', 0xe6, 0xe9, 0xfa, 0xf4, 0xeb, 0xfd};
    memcpy((char *)ram + 0x1000, code, sizeof code);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs s;
    if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
    s.cs.base = 0;
    s.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
    struct kvm_regs g;
    memset(&g, 0, sizeof g);
    g.rip = 0x1000;
    g.rflags = 2;
    if (ioctl(vcpu, KVM_SET_REGS, &g) < 0) die("KVM_SET_REGS");
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT) {
            if (write(1, (char *)run + run->io.data_offset, 1) != 1) die("write");
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            pause();
        } else {
            fprintf(stderr, "kvmfloor: unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
}
