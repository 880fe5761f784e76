// A console chat over the C# binding: joins a room, prints its events, sends each line typed
// ("/quit" or end of input to leave). The loop is a game's Update(): it polls, never blocks.
//
//   mcs -out:Chat.exe ffi/csharp/RoomcastClient.cs ffi/examples/Chat.cs
//   LD_LIBRARY_PATH=target/debug mono Chat.exe 127.0.0.1:7700 roomcast-data/ca.pem "$TOKEN" lobby
using System;
using System.Collections.Concurrent;
using System.IO;
using System.Threading;
using Roomcast;

static class Chat
{
    static int Main(string[] args)
    {
        if (args.Length != 4)
        {
            Console.Error.WriteLine("usage: Chat.exe SERVER CA_PEM_FILE TOKEN ROOM");
            return 2;
        }
        string room = args[3];
        // Console input blocks, so it is read on a thread of its own and handed over in a queue:
        // the roomcast client itself is only touched from the main loop.
        var lines = new BlockingCollection<string>(64);
        new Thread(() =>
        {
            string line;
            while ((line = Console.ReadLine()) != null && line != "/quit") lines.Add(line);
            lines.CompleteAdding();
        }) { IsBackground = true }.Start();

        using (var client = new RoomcastClient(new RoomcastOptions
        {
            Server = args[0], CaPem = File.ReadAllText(args[1]), Token = args[2],
        }))
        {
            client.Join(room, 10);
            int sending = 0;
            bool closing = false;
            while (!client.IsClosed)
            {
                string line;
                while (lines.TryTake(out line))
                {
                    client.Send(room, "chat", line);
                    sending++;
                }
                if (lines.IsCompleted && sending == 0 && !closing)
                {
                    closing = true; // every line typed has its reply: close
                    client.Close();
                }
                Event e;
                while ((e = client.Poll()) != null)
                {
                    if (e.Kind == EventKind.Reply && e.RequestKind == RequestKind.Send) sending--;
                    Show(e);
                }
                Thread.Sleep(16); // one frame
            }
        }
        return 0;
    }

    static void Show(Event e)
    {
        switch (e.Kind)
        {
            case EventKind.Message:
                Console.WriteLine("[" + e.Message.Seq + "] " + (e.Message.From == "" ? "system" : e.Message.From) + ": " + e.Message.Text);
                break;
            case EventKind.Reply:
                if (e.Status != Status.Ok) Console.WriteLine("* request " + e.RequestId + " failed: " + e.Text);
                else if (e.RequestKind == RequestKind.Join)
                {
                    Console.WriteLine("* joined " + e.Info.Id + " (" + e.Info.MemberCount + " members)");
                    foreach (var m in e.Messages) Console.WriteLine("[" + m.Seq + "] " + m.From + ": " + m.Text);
                }
                break;
            case EventKind.Connected:
                Console.WriteLine("* connected as " + e.User);
                break;
            case EventKind.Closed:
                Console.WriteLine("* closed (" + e.Status + "): " + e.Text);
                break;
            default:
                Console.WriteLine("* " + e);
                break;
        }
    }
}
