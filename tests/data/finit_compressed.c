/* /init for tests/test_review_modrw_boot.py: loads each /modules/<name> named in /modules/order with
   finit_module(MODULE_INIT_COMPRESSED_FILE), the kernel's own decompressor (kernel/module/decompress.c),
   as kmod does where the kernel's compression is the file's; prints one line per module, unloads
   it (they are all nls_utf8), powers off. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MODULE_INIT_COMPRESSED_FILE 4

int main(void)
{
	char name[256], path[300];
	FILE *order;

	mount("proc", "/proc", "proc", 0, 0);
	order = fopen("/modules/order", "r");
	while (order && fgets(name, sizeof(name), order)) {
		name[strcspn(name, "\n")] = 0;
		snprintf(path, sizeof(path), "/modules/%s", name);
		int fd = open(path, O_RDONLY);
		long rc = syscall(SYS_finit_module, fd, "", MODULE_INIT_COMPRESSED_FILE);
		printf("MCOUNTRW-FINIT %s errno=%d\n", name, rc ? errno : 0);
		fflush(stdout);
		close(fd);
		if (rc == 0)
			syscall(SYS_delete_module, "nls_utf8", O_NONBLOCK);
	}
	printf("MCOUNTRW-DONE\n");
	fflush(stdout);
	reboot(RB_POWER_OFF);
	return 0;
}
